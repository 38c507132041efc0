"""The one error family: every problem a user can fix is an `HfxrayError` whose message ends in "To fix: ...".

Entry points (`hfxray.cli.main`, `scripts/train.py`) catch `HfxrayError` once and print `error: MESSAGE` with
exit status 2. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class HfxrayError(Exception):
    """A problem with the user's input, files or environment; the message is one line and says how to fix it."""


def one_line(message: object) -> str:
    """The message flattened to one line (library errors often span several)."""
    return " ".join(str(message).split())
