"""The one error family: every problem a user can fix is an `HfxrayError` whose message ends in "To fix: ...".

Entry points (`hfxray.cli.main`, `scripts/train.py`) catch `HfxrayError` once and print `error: MESSAGE` with
exit status 2. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import unicodedata


class HfxrayError(Exception):
    """A problem with the user's input, files or environment; the message is one line and says how to fix it."""


class ImageProblem(HfxrayError):
    """An image that cannot be used; `str(err)` is a one-line reason suitable for a manifest.

    Raised by `hfxray.imaging` and by `hfxray.dicom`, which imaging calls: it lives here, below both.
    """


def one_line(message: object) -> str:
    """The message flattened to one line (library errors often span several)."""
    return " ".join(str(message).split())


def excerpt(message: object, limit: int = 160) -> str:
    """A library message shortened for an error line: one line, cut at a sentence or word end, never mid-word."""
    text = one_line(message)
    if len(text) <= limit:
        return text
    cut = text[:limit]
    end = cut.rfind(". ")
    return cut[:end + 1] if end > limit // 3 else cut.rsplit(" ", 1)[0] + " ..."


def printable(text: str) -> str:
    """`text` with undecodable bytes and control characters escaped (\\xNN), so that it fits one UTF-8 line."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(f"\\x{ord(c):02x}" if unicodedata.category(c) == "Cc" else c for c in text)
