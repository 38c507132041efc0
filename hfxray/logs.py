"""Progress and info messages through `logging` (the `hfxray` logger), so `--log_level` and `-q` work.

Results a command exists to print (tables, summaries, JSON on request) still go to stdout; everything else
(progress, warnings) goes through this logger to stderr.
"""

from __future__ import annotations

import logging
import sys

ROOT = "hfxray"


def get_logger(name: str) -> logging.Logger:
    """The logger of an hfxray module (a child of `hfxray`)."""
    return logging.getLogger(name if name.startswith(ROOT) else f"{ROOT}.{name}")


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time of the message (test runners replace it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure(level: int | str = logging.INFO) -> None:
    """Send `hfxray` messages at `level` and above to stderr as plain lines (idempotent)."""
    import warnings

    # The Trainer asks for pinned memory by default; on a CPU-only machine torch warns once per DataLoader,
    # which in training with per-epoch evaluation is a warning every epoch that asks nothing of the user.
    warnings.filterwarnings("ignore", message=".*'pin_memory' argument is set as true but no accelerator.*")
    root = logging.getLogger(ROOT)
    if not any(isinstance(handler, _CurrentStderr) for handler in root.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
        root.propagate = False
    root.setLevel(level)
