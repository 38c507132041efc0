"""Progress and info messages through `logging` (the `hfxray` logger), so `--log_level` and `-q` work.

Results a command exists to print (tables, summaries, JSON on request) still go to stdout; everything else
(progress, warnings) goes through this logger to stderr.
"""

from __future__ import annotations

import contextlib
import logging
import sys

ROOT = "hfxray"
# -q (the command line's --quiet): warnings and errors only, for every message of the process, the libraries'
# progress bars included. Later `configure` calls (the training entry point's, say) keep it.
_quiet = False


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


def configure(level: int | str = logging.INFO, quiet: bool | None = None) -> None:
    """Send `hfxray` messages at `level` and above to stderr as plain lines (idempotent).

    `quiet` (the command line's -q) sets WARNING as the floor for this and later calls, and turns off the progress
    bars of hfxray, huggingface_hub, transformers and datasets; `quiet=False` lifts it.
    """
    import warnings

    global _quiet
    # The Trainer asks for pinned memory by default; on a CPU-only machine torch warns once per DataLoader,
    # which in training with per-epoch evaluation is a warning every epoch that asks nothing of the user.
    warnings.filterwarnings("ignore", message=".*'pin_memory' argument is set as true but no accelerator.*")
    if quiet is not None and quiet != _quiet:
        _quiet = quiet
        _library_progress_bars(show=not quiet)
    level = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if _quiet:
        level = max(level, logging.WARNING)
    root = logging.getLogger(ROOT)
    if not any(isinstance(handler, _CurrentStderr) for handler in root.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
        root.propagate = False
    root.setLevel(level)


def quiet() -> bool:
    """Whether -q is in force (warnings and errors only)."""
    return _quiet


def progress_bar_disable() -> bool | None:
    """tqdm's `disable` for hfxray's own bars: off under -q, else tqdm's default of no bar outside a terminal."""
    return True if _quiet else None


def progress(items, total: int, desc: str, unit: str = "item", every_s: float = 10.0):
    """Iterate `items` with a progress bar on a terminal; without one (a log file, a pipe, CI) a plain line
    `desc: 40/92 images (43 %), 25 s` at most every `every_s` seconds and at the end, so a command that runs for
    minutes is never silent. Nothing under -q."""
    import time

    from tqdm.auto import tqdm

    if _quiet:
        yield from items
        return
    if sys.stderr.isatty():
        yield from tqdm(items, total=total, desc=desc, unit=unit)
        return
    logger = get_logger("progress")
    start = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= every_s or done == total:
            last = now
            percent = f" ({100 * done / total:.0f} %)" if total else ""
            logger.info("%s: %d/%d %ss%s, %.0f s", desc, done, total, unit, percent, now - start)


@contextlib.contextmanager
def library_progress_bars_off(active: bool = True):
    """Inside the block (when `active`) the libraries' progress bars are off; afterwards they are as they were."""
    from huggingface_hub import utils as hub_utils

    turn_off = active and not hub_utils.are_progress_bars_disabled()
    if turn_off:
        _library_progress_bars(show=False)
    try:
        yield
    finally:
        if turn_off and not _quiet:
            _library_progress_bars(show=True)


def _library_progress_bars(show: bool) -> None:
    """The libraries' own switches. transformers reads huggingface_hub's when it is imported, so it needs its own
    call only if it is imported already. A user's HF_*_DISABLE_PROGRESS_BARS stays in force when -q is lifted."""
    from huggingface_hub import utils as hub_utils

    from .env import env_flag

    if not (show and env_flag("HF_HUB_DISABLE_PROGRESS_BARS")):
        (hub_utils.enable_progress_bars if show else hub_utils.disable_progress_bars)()
        if "transformers" in sys.modules:
            from transformers.utils import logging as transformers_logging

            (transformers_logging.enable_progress_bar if show else transformers_logging.disable_progress_bar)()
    if not (show and env_flag("HF_DATASETS_DISABLE_PROGRESS_BARS")):
        import datasets

        (datasets.enable_progress_bars if show else datasets.disable_progress_bars)()


# transformers 5.x draws these bars for every model read or written, a local folder read in well under a second
# included: noise in every command's output, and in logs without a terminal one line per update.
HIDDEN_LIBRARY_BARS = ("Loading weights", "Writing model shards")


def hide_weight_loading_bars() -> None:
    """Turn off transformers' per-model weight loading/saving bars (idempotent; download bars stay)."""
    from transformers.utils import logging as transformers_logging

    if not hasattr(transformers_logging, "set_tqdm_hook"):  # releases before 5.x draw no such bar
        return

    def hook(factory, args, kwargs):
        if kwargs.get("desc") in HIDDEN_LIBRARY_BARS:
            kwargs = {**kwargs, "disable": True}
        return factory(*args, **kwargs)

    hook.hfxray = True
    previous = transformers_logging.set_tqdm_hook(hook)
    if previous is not None and not getattr(previous, "hfxray", False):
        transformers_logging.set_tqdm_hook(previous)  # someone else's hook stays
