"""What every source layout reader produces: one `SourceRecord` per metadata row or folder entry, kept or skipped
with its reason; the shared CSV reader and the check on untrusted file names."""

from __future__ import annotations

import csv
import re
import stat
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import HfxrayError, printable
from ..imaging import ImageProblem


class DataError(HfxrayError):
    """The source cannot be used at all (missing or malformed CSV, nothing usable left)."""


def unsafe_name_reason(name: str) -> str:
    """Why a CSV image name cannot be used as a plain file name inside one folder ("" when it can).

    CSV names are untrusted: a name that is a path could read from, or write to, anywhere once joined to a
    folder, so only bare file names are accepted.
    """
    if "\0" in name:
        return "unsafe file name: NUL byte"
    if any("\udc80" <= c <= "\udcff" for c in name):
        return "unsafe file name: bytes that are not UTF-8"
    if any(unicodedata.category(c) == "Cc" for c in name):
        return "unsafe file name: control character"
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "unsafe file name: absolute path"
    if ".." in re.split(r"[/\\]", name):
        return "unsafe file name: '..' leads out of the folder"
    if "/" in name or "\\" in name:
        return "unsafe file name: path separator (only names directly inside the split folder are read)"
    if ":" in name:
        return "unsafe file name: ':' (a drive or stream separator on Windows)"
    if name == ".":
        return "unsafe file name: '.' is the folder itself"
    return ""


@dataclass
class SourceRecord:
    """One CSV row (or unlisted file) on its way to the manifest."""

    source_file: str
    csv_fields: dict[str, str]
    label: str | None = None
    group: str = ""
    split: str = ""
    reason: str = ""
    width: int | None = None
    height: int | None = None
    mode: str = ""
    format: str | None = None
    needs_conversion: bool = False
    csv_row: int | None = None  # 1 = first data row of the CSV; None for files on disk that the CSV does not list
    output_name: str = ""
    window: str = ""  # DICOM sources: the display window that made the 8-bit PNG
    notes: list[str] = field(default_factory=list)
    source: str = ""  # the source's name (its format, or its folder's name when two sources share a format)
    source_format: str = ""
    source_dir: Path | None = None  # the folder that holds `source_file`
    finding: str = ""  # the source's own description of the class
    view: str = ""
    also_groups: list[str] = field(default_factory=list)  # patient groups that share this image
    phash: str = ""
    fingerprint: object = None  # hfxray.duplicates.Fingerprint of a checked image (excluded ones get it later)
    duplicate_of: str = ""  # "source/file" of the copy that was kept
    merged_with: list[str] = field(default_factory=list)  # "source/file" of the copies that were dropped

    @property
    def kept(self) -> bool:
        return self.label is not None and not self.reason


def read_csv_rows(csv_path: Path, required: tuple[str, ...], folder: str, original: str) -> list[dict[str, str]]:
    """A source's metadata CSV as stripped rows, its header checked; DataError naming `folder` (what --source
    should be) or `original` (the CSV to use instead) when it cannot be read."""
    shown = printable(str(csv_path))
    if not csv_path.is_file():
        raise DataError(f"{shown}: metadata CSV not found. To fix: point --source at {folder}")
    try:
        # surrogateescape: a row with bytes that are not UTF-8 is skipped with its reason, not the whole CSV
        with csv_path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            missing = [c for c in required if c not in columns]
            if missing:
                raise DataError(f"{shown}: missing column(s) {', '.join(missing)} (found: "
                                f"{printable(', '.join(c for c in columns if c)) or 'none'}). To fix: use {original}, "
                                "whose header names these columns.")
            rows, start = [], reader.line_num + 1
            for row in reader:
                runaway = _runaway_field(row, len(columns))
                if runaway:
                    raise DataError(f"{shown}: the {runaway!r} field that starts on line {start} runs to line "
                                    f"{reader.line_num}: a quote (\") opened there is not closed, and the rows after "
                                    f"it would be read as part of it. To fix: remove the stray quote, or use "
                                    f"{original}.")
                rows.append({k: (v or "").strip() for k, v in row.items() if k})
                start = reader.line_num + 1
            return rows
    except csv.Error as err:
        raise DataError(f"{shown}: malformed CSV ({err}). To fix: re-download {original}.") from None


def _runaway_field(row: dict, n_columns: int) -> str | None:
    """The column whose field a quote left open ran away with, swallowing the rows after it, or None.

    Such a field runs over several lines and leaves the row short of columns, or (in the last column) holds lines
    that are whole rows of the file. A quoted field that closes, such as a note or a name over two lines, is a
    row like any other.
    """
    short = None in row.values()
    for column, value in row.items():
        if not isinstance(value, str) or ("\n" not in value and "\r" not in value):
            continue
        swallowed = any(line.count(",") >= n_columns - 1 for line in value.splitlines()[1:])
        if short or swallowed:
            return column or "unnamed first"
    return None


def source_path(record: SourceRecord) -> Path:
    if record.source_dir is None:  # unreachable for kept records: every reader sets the folder
        raise ImageProblem(f"no source folder for {printable(record.source_file)!r}")
    return record.source_dir / record.source_file


def link_problem(path: Path, folder: Path) -> str:
    """Why `path` (a name in the split folder) must not be read ("" when it may): links that leave the folder,
    dangle or loop, and anything that is not a regular file."""
    try:
        if not path.is_symlink():
            return ""  # missing files and odd types are reported by check_image
        target = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return "broken or looping symbolic link"
    if folder.resolve() not in target.parents:
        return "symbolic link to a file outside its split folder"
    if not stat.S_ISREG(target.stat().st_mode):
        return "symbolic link to something that is not a regular file"
    return ""
