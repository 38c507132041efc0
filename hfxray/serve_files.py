"""`hfxray serve` keeps nothing: every upload lives in one private folder of the process (mode 0700) until its
analysis ends, no image derived from it is ever written to disk, and the folder goes when the process ends (normal
exit, Ctrl+C, SIGTERM, SIGHUP).

Gradio 6 writes uploads into GRADIO_TEMP_DIR (default: a `gradio` folder in the system temp dir shared by every
user, files 0644, kept after exit), cached examples into GRADIO_EXAMPLES_CACHE (default: `.gradio/` in the current
folder), and a hash seed into its own installed package (`gradio/hash_seed.txt`). All three are pointed into the
private folder before gradio is imported (`open_private_folder`).

Each request deletes its upload when its analysis ends (`PrivateFolder.discard`). The page's derived images (the
preview, the heatmap overlays) travel inside the answer as `data:` URIs (`hfxray.serve_content.image_html`), so
right after a request the folder holds only the hash seed and the examples' copies. What remains to sweep is an
upload that was never analysed: one superseded in the queue by a newer upload of the same page, one whose request
was refused (queue full) or whose client left before joining the queue. Each request, and Gradio's own sweep while
none comes (`delete_cache`, set in `hfxray.serve.build_app`), deletes such files after `ORPHAN_SECONDS`.
"""

from __future__ import annotations

import atexit
import importlib.abc
import importlib.machinery
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from .errors import HfxrayError

# An upload waits in the queue (up to `hfxray.serve.QUEUE_SIZE` requests, one analysis at a time) before its
# analysis: the sweep must not take it from a request still waiting. Five minutes is over 9 s per waiting request;
# an upload older than that was never analysed.
ORPHAN_SECONDS = 300
SWEEP_EVERY_SECONDS = 60  # how often Gradio's own sweep looks, between requests
PREFIX = "hfxray-serve-"


class PrivateFolderError(HfxrayError):
    """The private temporary folder cannot be created."""


class PrivateFolder:
    """One process's temporary folder for uploads (and Gradio's caches); `keep` holds the example images' copies."""

    def __init__(self, parent: str | os.PathLike | None = None):
        try:
            if parent is not None:
                Path(parent).mkdir(parents=True, exist_ok=True)
            self.path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=parent))  # created 0700, a new random name
        except OSError as err:
            raise PrivateFolderError(f"cannot create a private temporary folder in {parent or tempfile.gettempdir()} "
                                     f"({err.strerror or type(err).__name__}). To fix: set GRADIO_TEMP_DIR (or "
                                     "TMPDIR) to a writable folder.") from None
        self.keep: set[str] = set()

    def __contains__(self, path) -> bool:
        try:
            return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(self.path))
        except (OSError, ValueError):
            return False

    def keep_present(self) -> None:
        """Exempt every file now in the folder from `discard` and `sweep` (call before the server takes uploads)."""
        self.keep |= {os.path.realpath(os.path.join(root, name)) for root, _, names in os.walk(self.path)
                      for name in names}

    def discard(self, path: str | os.PathLike | None) -> None:
        """Delete one file of this folder (an upload whose analysis ended) and its folder when that is empty."""
        if not path or path not in self or os.path.realpath(path) in self.keep:
            return
        path = Path(path)
        path.unlink(missing_ok=True)
        if path.parent != self.path:
            try:
                path.parent.rmdir()
            except OSError:
                pass  # not empty: another file of the same upload batch

    def sweep(self, older_than: float = ORPHAN_SECONDS) -> int:
        """Delete the files older than `older_than` seconds (examples kept) and empty folders; returns how many."""
        now, removed = time.time(), 0
        for root, folders, files in os.walk(self.path, topdown=False):
            for name in files:
                path = os.path.join(root, name)
                try:
                    if os.path.realpath(path) not in self.keep and now - os.lstat(path).st_mtime > older_than:
                        os.unlink(path)
                        removed += 1
                except OSError:
                    continue  # gone already: Gradio's sweep or another request
            for name in folders:
                try:
                    os.rmdir(os.path.join(root, name))
                except OSError:
                    pass
        return removed

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def close(self) -> None:
        """Delete the folder and undo what `open_private_folder` set (environment, signal handlers, import hook),
        so a process that served in-process (a test, a notebook) carries on as before."""
        self.remove()
        for name, value in getattr(self, "_environment", {}).items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        for signum, handler in getattr(self, "_handlers", {}).items():
            signal.signal(signum, handler)
        sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _GradioHashSeed)]


class _GradioHashSeed(importlib.abc.MetaPathFinder):
    """Loads `gradio.utils` with its HASH_SEED_PATH moved out of the installed package.

    gradio 6.31 computes the seed while `import gradio` runs (gradio/processing_utils.py) and, when the file is
    missing, writes it next to its own `__init__.py`; gradio.utils has to be patched between its own execution and
    that import, which only an import hook can do.
    """

    def __init__(self, seed_path: Path):
        self.seed_path = str(seed_path)

    def find_spec(self, name, path, target=None):
        if name != "gradio.utils":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        run_module, seed_path = spec.loader.exec_module, self.seed_path

        def exec_module(module):
            run_module(module)
            module.HASH_SEED_PATH = seed_path

        spec.loader.exec_module = exec_module
        return spec


def redirect_gradio_hash_seed(seed_path: Path) -> None:
    """Make gradio read and write its hash seed at `seed_path`, never inside the installed package."""
    if "gradio.utils" in sys.modules:  # already imported: its seed is computed; later reads use the new path
        sys.modules["gradio.utils"].HASH_SEED_PATH = str(seed_path)
    elif not any(isinstance(finder, _GradioHashSeed) for finder in sys.meta_path):
        sys.meta_path.insert(0, _GradioHashSeed(seed_path))


def _stop(signum, frame):
    # Gradio's block_thread closes the server on KeyboardInterrupt and returns; the folder then goes at exit.
    raise KeyboardInterrupt(signal.Signals(signum).name)


def open_private_folder() -> PrivateFolder:
    """Create the private folder (inside GRADIO_TEMP_DIR when set, else the system temp dir), point gradio at it,
    and remove it at exit, after Ctrl+C, SIGTERM and SIGHUP. Call before gradio is imported."""
    folder = PrivateFolder(os.environ.get("GRADIO_TEMP_DIR") or None)
    atexit.register(folder.remove)
    folder._environment = {name: os.environ.get(name) for name in ("GRADIO_TEMP_DIR", "GRADIO_EXAMPLES_CACHE")}
    os.environ["GRADIO_TEMP_DIR"] = str(folder.path)
    os.environ["GRADIO_EXAMPLES_CACHE"] = str(folder.path / "examples")
    redirect_gradio_hash_seed(folder.path / "hash_seed.txt")
    folder._handlers = {}
    for signum in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if signum is not None:
            folder._handlers[signum] = signal.signal(signum, _stop)
    return folder
