"""Where hfxray writes: each command's output folder or file is checked here before any work.

hfxray writes only under the folder or file a user names (and the decode cache). A link planted there would carry
a write to a file elsewhere: writing to a symbolic link writes its target, and writing into a hard-linked file
changes every name of it (a prepared ImageFolder holds hard links to the source images). transformers' Trainer and
matplotlib open paths as they are, so the checks come first: an output folder that is a link, a file, holds a link,
or is, holds or lies inside one of the command's inputs is refused with one line, before anything is written.

Results files are written whole or not at all (`write_atomic`), and a prepared folder is replaced in one step:
built beside OUT, marked as hfxray's, and swapped in (`swap_into_place`), so an interrupted command leaves the
previous output whole.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import secrets
import shutil
import stat
import sys
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

from .errors import HfxrayError, printable
from .runs import RunFolder


class OutputError(HfxrayError):
    """An output folder or file cannot be written safely; the message names it and what to do."""


def link_kind(path: Path) -> str | None:
    """'a symbolic link' / 'a hard link' (a file with more than one name) / None, from one lstat."""
    try:
        info = path.lstat()
    except OSError:
        return None
    if stat.S_ISLNK(info.st_mode):
        return "a symbolic link"
    if not stat.S_ISDIR(info.st_mode) and info.st_nlink > 1:
        return "a hard link"
    return None


def first_link(folder: Path, recursive: bool = True) -> tuple[Path, str] | None:
    """The first symbolic or hard link in `folder`, or anywhere under it when `recursive` (never followed)."""
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in sorted(dirs) + sorted(files):
            path = Path(root, name)
            kind = link_kind(path)
            if kind:
                return path, kind
        if not recursive:
            break
    return None


def relation(out: Path, other: Path) -> str | None:
    """How resolved path `out` stands to resolved path `other`: "is", "holds", "lies inside" or None."""
    if out == other:
        return "is"
    if out in other.parents:
        return "holds"
    if other in out.parents:
        return "lies inside"
    return None


def check_output_folder(out: str | os.PathLike, flag: str = "--out",
                        inputs: Iterable[tuple[str, str | os.PathLike | None]] = (), recursive: bool = True) -> Path:
    """Refuse an output folder that is a link or a file, that holds a link, or that is, holds or lies inside an input.

    `inputs` are (what, path) pairs such as ("the --data_dir", data_dir); missing paths are ignored. The folder
    itself may be missing (it is created later) or an earlier run's (it is resumed or replaced file by file).
    `recursive`: links are looked for in the whole tree (a run or CV folder, all of it written by hfxray), or only
    among the folder's own entries (report and explain write only there, so a project folder with a virtual
    environment or a prepared data folder in it stays usable).
    """
    out = Path(out)
    shown = printable(str(out))
    if out.is_symlink():
        raise OutputError(f"{flag} {shown} is a symbolic link; hfxray writes only into a real folder. To fix: pass "
                          "the folder it points to, or a new folder.")
    if out.exists() and not out.is_dir():
        raise OutputError(f"{flag} {shown} is a file. To fix: pass a folder name (a missing folder is created).")
    resolved = out.resolve()
    for what, path in inputs:
        if not path or not Path(path).exists():
            continue
        found = relation(resolved, Path(path).resolve())
        if found:
            raise OutputError(f"{flag} {shown} {found} {what} ({printable(str(path))}): results would mix with "
                              "the data they came from. To fix: write to a folder of its own, outside it.")
    if out.is_dir():
        found = first_link(out, recursive)
        if found:
            path, kind = found
            raise OutputError(f"{flag} {shown}: {printable(str(path))} is {kind}, so writing there would change a "
                              f"file outside {flag}. To fix: remove the link, or write to a new folder.")
    return out


def check_output_file(path: str | os.PathLike, flag: str = "--out",
                      inputs: Iterable[tuple[str, str | os.PathLike | None]] = ()) -> Path:
    """Refuse an output file that is a folder or a link, or that would lie inside an input (an earlier plain file
    of that name is replaced; a missing folder above it is created by the writer)."""
    path = Path(path)
    shown = printable(str(path))
    kind = link_kind(path)
    if kind:
        raise OutputError(f"{flag} {shown} is {kind}, so writing it would change a file elsewhere. To fix: remove "
                          "it, or pass another file name.")
    if path.is_dir():
        raise OutputError(f"{flag} {shown} is a folder. To fix: pass a file name.")
    resolved = path.resolve()
    for what, other in inputs:
        if other and Path(other).exists() and relation(resolved, Path(other).resolve()) == "lies inside":
            raise OutputError(f"{flag} {shown} lies inside {what} ({printable(str(other))}): results would mix "
                              "with the data they came from. To fix: write it outside that folder.")
    return path


def check_run_folder(output_dir: str | os.PathLike, data_dir=None, checkpoint=None) -> Path:
    """`train`'s --output_dir: the checks above, and no folder of other files (the run would replace a user's
    README.md or config.json by its own): it must be new, empty, or an earlier run's (args.yaml, checkpoints)."""
    out = check_output_folder(output_dir, "--output_dir",
                              [("the --data_dir", data_dir), ("the --checkpoint folder", checkpoint)])
    if out.is_dir():
        entries = sorted(p.name for p in out.iterdir())
        # args.yaml is written as training starts; TensorBoard's runs/ is all a run stopped before it may leave
        is_run = bool({RunFolder.ARGS, "runs"} & set(entries)) or any(n.startswith("checkpoint-") for n in entries)
        if entries and not is_run:
            raise OutputError(f"--output_dir {printable(str(out))} holds files that are not a training run's (e.g. "
                              f"{printable(entries[0])}). To fix: pass a new or empty folder.")
    return out


def write_atomic(path: str | os.PathLike, content: str | bytes) -> Path:
    """Write a file whole or not at all: a half-written results file must never look like a finished one."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial-{secrets.token_hex(4)}")
    try:
        if isinstance(content, bytes):
            partial.write_bytes(content)
        else:
            partial.write_text(content, encoding="utf-8")
        os.replace(partial, path)
    finally:
        if partial.exists():
            partial.unlink()
    return path


# --- a folder replaced whole: the prepared ImageFolder ---------------------------------------------------------
# Written by `prepare` into every output: the only proof that a folder is hfxray's to replace or delete.
MARKER_NAME = ".hfxray-prepared"
MARKER_KIND = "hfxray prepared ImageFolder"


def read_marker(folder: Path) -> dict | None:
    """The content of hfxray's marker in `folder`, or None when the folder is not (wholly) hfxray's."""
    marker = folder / MARKER_NAME
    try:
        if folder.is_symlink() or marker.is_symlink() or not marker.is_file():
            return None
        content = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) and content.get("kind") == MARKER_KIND else None


def write_marker(folder: Path, complete: bool) -> None:
    temporary = folder / f"{MARKER_NAME}.tmp"
    with temporary.open("w", encoding="utf-8") as handle:
        handle.write(json.dumps({"kind": MARKER_KIND, "complete": complete}) + "\n")
    os.replace(temporary, folder / MARKER_NAME)


def delete_own(folder: Path) -> bool:
    """Delete `folder` if it is hfxray's (marker) or empty; the marker goes last, so that a deletion cut short
    is still recognised, and finished, by the next run. Returns False (nothing deleted) otherwise."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    if read_marker(folder) is None:
        try:
            folder.rmdir()  # only succeeds when empty
            return True
        except OSError:
            return False
    for child in folder.iterdir():
        if child.name == MARKER_NAME:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    (folder / MARKER_NAME).unlink()
    folder.rmdir()
    return True


def leftovers(out: Path, kind: str) -> list[Path]:
    """Sibling folders `.OUT.partial-*` / `.OUT.old-*` of earlier runs that were killed, newest first."""
    prefix = f".{out.name}.{kind}-"
    found = [p for p in out.parent.iterdir() if p.name.startswith(prefix) and p.is_dir() and not p.is_symlink()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def new_sibling(out: Path, kind: str) -> Path:
    """A new empty folder `.OUT.kind-XXXXXXXX` next to OUT, with the umask's permissions (mkdtemp's 0700 would
    make the swapped-in output unreadable to the rest of a team)."""
    while True:
        folder = out.parent / f".{out.name}.{kind}-{secrets.token_hex(4)}"
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue


def exchange(first: Path, second: Path) -> bool:
    """Swap two folders in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(code, os.strerror(code), str(second))


def swap_into_place(staging: Path, out: Path) -> Path | None:
    """Put the complete `staging` at `out`. At every instant `out` holds the complete old or the complete new
    output: one atomic exchange where the system has it; otherwise two renames, and a run killed between them is
    recovered by `recover` on the next run. Returns the folder now holding the old output (to delete), if any."""
    if not out.exists():
        staging.rename(out)
        return None
    if exchange(staging, out):
        return staging
    retired = new_sibling(out, "old")
    retired.rmdir()
    out.rename(retired)
    staging.rename(out)
    return retired


def recover(out: Path, echo) -> None:
    """A run killed between the two renames of the swap left no OUT: put the previous output back."""
    if out.exists() or out.is_symlink():
        return
    for retired in leftovers(out, "old"):
        marker = read_marker(retired)
        if marker and marker.get("complete"):
            retired.rename(out)
            echo(f"warning: an earlier run was interrupted while replacing {out}; its previous output was restored")
            return


def clean_leftovers(out: Path, echo) -> None:
    for leftover in leftovers(out, "partial") + leftovers(out, "old"):
        if not delete_own(leftover):
            echo(f"warning: {printable(str(leftover))} is not hfxray's output; left in place")


@contextmanager
def locked(folder: Path):
    """Serialise runs that write next to each other, so that one never cleans up another's staging folder."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks
        yield
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(f"{printable(str(folder))}: another `hfxray data prepare` is writing there. To fix: wait "
                            "for it to finish, or choose another --out.") from None
        except OSError:  # a file system without locks: go on unlocked
            pass
        yield
    finally:
        os.close(descriptor)


# --- CSV cells ------------------------------------------------------------------------------------------------
# A spreadsheet opening a CSV runs a cell that starts with one of these as a formula (OWASP, "CSV Injection"): a
# file name or a source's `finding` such as `=HYPERLINK(...)` would. Every CSV hfxray writes passes its rows
# through `csv_row`, and hfxray's own readers through `read_csv_row`.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
CSV_ESCAPE = "'"


def csv_cell(value):
    """A cell as hfxray writes it: text that starts with a formula character gets OWASP's leading single quote.

    Text that already starts with the quote gets one too, so that `read_csv_cell` gives back exactly what was
    written. Numbers (int, float) are written as they are: hfxray computes them (a probability, a width, a DICOM
    window centre that may be negative), so they are not a user's text, and a quoted `-0.5` would no longer be a
    number to the spreadsheet or to a reader of the file.
    """
    if isinstance(value, str) and value.startswith((*FORMULA_START, CSV_ESCAPE)):
        return CSV_ESCAPE + value
    return value


def csv_row(row: dict) -> dict:
    """Every cell of a row through `csv_cell`."""
    return {key: csv_cell(value) for key, value in row.items()}


def read_csv_cell(text):
    """The text `csv_cell` was given (its leading quote removed)."""
    return text[1:] if isinstance(text, str) and text.startswith(CSV_ESCAPE) else text


def read_csv_row(row: dict) -> dict:
    """A row of csv.DictReader over a CSV hfxray wrote, with `csv_cell`'s quotes removed."""
    return {key: read_csv_cell(value) for key, value in row.items()}
