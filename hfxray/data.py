"""CoronaHack metadata CSV + image folders -> binary (normal / virus) ImageFolder split by patient.

The study split images at random, so X-rays of one child ended up in train and test. Here TEST stays TEST and
the validation split is carved out of TRAIN by patient group (`patient_group`). Every source row ends up in
`manifest.csv`, kept or skipped with its reason, so that no data disappears silently.
"""

from __future__ import annotations

import csv
import ctypes
import errno
import json
import os
import random
import re
import secrets
import shutil
import stat
import sys
import unicodedata
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .errors import HfxrayError, printable
from .imaging import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageProblem, check_image, load_standard_image

CLASS_NAMES = ("normal", "virus")
SPLITS = ("train", "validation", "test")
CSV_NAME = "Chest_xray_Corona_Metadata.csv"
IMAGE_ROOT = Path("Coronahack-Chest-XRay-Dataset") / "Coronahack-Chest-XRay-Dataset"
MANIFEST_NAME = "manifest.csv"
# Written by `prepare` into every output: the only proof that a folder is hfxray's to replace or delete.
MARKER_NAME = ".hfxray-prepared"
MARKER_KIND = "hfxray prepared ImageFolder"
TYPICAL_CROP = 224  # the full models' input size; smaller images are kept but reported
REQUIRED_COLUMNS = ("X_ray_image_name", "Label", "Dataset_type", "Label_1_Virus_category", "Label_2_Virus_category")
SOURCE_FOLDERS = {"TRAIN": "train", "TEST": "test"}
MANIFEST_COLUMNS = (
    "file", "label", "split", "patient_group", "status", "reason", "action",
    "source_file", "Dataset_type", "Label", "Label_1_Virus_category", "Label_2_Virus_category",
    "width", "height", "mode", "csv_row", "window",
)
# The Kaggle CSV spells the pneumonia label "Pnemonia"; accept the correct spelling too. Compared lower-case.
NORMAL_LABELS = {"normal"}
PNEUMONIA_LABELS = {"pnemonia", "pneumonia"}
LABEL_1_VALUES = {"": None, "virus": "virus", "bacteria": "bacteria", "stress-smoking": "stress-smoking"}

KERMANY_PERSON = re.compile(r"^person(\d+)_", re.IGNORECASE)
# IM-0115-0001.jpeg and NORMAL2-IM-0115-0001.jpeg are numbered by patient; the two series are grouped together.
KERMANY_IM = re.compile(r"^(?:NORMAL2-)?IM-(\d+)-", re.IGNORECASE)


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


def patient_group(file_name: str) -> str:
    """Patient key from a Kermany file name; any other file is its own group."""
    if match := KERMANY_PERSON.match(file_name):
        return f"person{int(match.group(1))}"
    if match := KERMANY_IM.match(file_name):
        return f"im{int(match.group(1)):04d}"
    return f"file:{file_name}"


def binary_label(label: str, label_1: str) -> tuple[str | None, str]:
    """Map the CSV's Label / Label_1_Virus_category to "normal", "virus" or None with the reason for exclusion."""
    label_key, label_1_key = label.strip().lower(), label_1.strip().lower()
    if label_1_key not in LABEL_1_VALUES:
        return None, f"unknown Label_1_Virus_category {label_1!r} (expected Virus, bacteria, Stress-Smoking or empty)"
    category = LABEL_1_VALUES[label_1_key]
    if label_key in NORMAL_LABELS:
        if category is not None:
            return None, f"inconsistent labels: Label=Normal with Label_1_Virus_category={label_1!r}"
        return "normal", ""
    if label_key not in PNEUMONIA_LABELS:
        return None, f"unknown Label {label!r} (expected Normal or Pnemonia)"
    if category == "virus":
        return "virus", ""
    if category is None:
        return None, "Label=Pnemonia without Label_1_Virus_category: cannot tell virus from bacteria"
    return None, f"excluded class: {category}"


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

    @property
    def kept(self) -> bool:
        return self.label is not None and not self.reason


@dataclass
class PrepareSummary:
    out_dir: Path
    counts: dict[str, Counter]  # split -> label -> images
    skipped: Counter  # reason kind -> images
    hierarchy: Counter  # (Label, Label_1, Label_2) -> rows
    warnings: list[str]

    @property
    def kept_total(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())


def read_metadata(csv_path: Path) -> list[dict[str, str]]:
    """Read the CSV, checking columns; raises DataError with what to do."""
    if not csv_path.is_file():
        raise DataError(
            f"{csv_path}: metadata CSV not found. To fix: point --source at the unzipped Kaggle CoronaHack folder "
            f"that holds {CSV_NAME} and {IMAGE_ROOT}/"
        )
    try:
        # surrogateescape: a row with bytes that are not UTF-8 is skipped with its reason, not the whole CSV
        with csv_path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            missing = [c for c in REQUIRED_COLUMNS if c not in columns]
            if missing:
                raise DataError(
                    f"{csv_path}: missing column(s) {', '.join(missing)} "
                    f"(found: {printable(', '.join(columns)) or 'none'}). "
                    "To fix: use the original Kaggle metadata CSV, whose header names these columns."
                )
            return [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    except csv.Error as err:
        raise DataError(f"{csv_path}: malformed CSV ({err}). To fix: re-download the metadata CSV.") from None


def _source_path(record: SourceRecord, image_root: Path) -> Path:
    return image_root / SOURCE_FOLDERS[record.csv_fields["Dataset_type"].upper()] / record.source_file


def _link_problem(path: Path, folder: Path) -> str:
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


def _check_files(records: list[SourceRecord], image_root: Path, min_side: int, max_pixels: int, progress) -> None:
    first_by_inode: dict[tuple[int, int], str] = {}
    for record in progress(records, desc="checking images", unit="img"):
        if not record.kept:
            continue
        path = _source_path(record, image_root)
        if reason := _link_problem(path, path.parent):
            record.reason = reason
            continue
        try:
            info = path.stat()
        except OSError:
            info = None  # check_image says why
        if info is not None:
            # One image under two names (a link) would count twice, and could sit in train and test at once.
            first = first_by_inode.setdefault((info.st_dev, info.st_ino), record.source_file)
            if first != record.source_file:
                record.reason = f"duplicate: the same file as {printable(first)} (a link)"
                continue
        try:
            check = check_image(path, max_pixels=max_pixels)
        except ImageProblem as problem:
            record.reason = str(problem)
            continue
        record.width, record.height, record.mode = check.width, check.height, check.mode
        record.format, record.needs_conversion = check.format, check.needs_conversion
        record.window = check.window
        if min(check.width, check.height) < min_side:
            record.reason = f"too small: {check.width}x{check.height} px, under --min-side {min_side}"


def assign_validation(records: list[SourceRecord], val_fraction: float, seed: int) -> None:
    """Move whole patient groups from train to validation, ~val_fraction of each class, deterministically.

    Each group counts for the class most of its images have; classes are filled one after the other by taking
    shuffled groups while that brings the class's validation count closer to its target.
    """
    groups: dict[str, list[SourceRecord]] = defaultdict(list)
    for record in records:
        if record.kept and record.split == "train":
            groups[record.group].append(record)
    by_class: dict[str, list[str]] = defaultdict(list)
    for group, members in sorted(groups.items()):
        majority = Counter(r.label for r in members).most_common(1)[0][0]
        by_class[majority].append(group)
    rng = random.Random(seed)
    for label in sorted(by_class):
        candidates = by_class[label]
        rng.shuffle(candidates)
        target = val_fraction * sum(len(groups[g]) for g in candidates)
        taken = 0
        for group in candidates:
            size = len(groups[group])
            if abs(taken + size - target) < abs(taken - target):
                taken += size
                for record in groups[group]:
                    record.split = "validation"


def _patients_in_train_and_test(records: list[SourceRecord]) -> list[str]:
    splits_by_group: dict[str, set[str]] = defaultdict(set)
    for record in records:
        if record.kept:
            splits_by_group[record.group].add("test" if record.split == "test" else "train")
    return sorted(g for g, s in splits_by_group.items() if len(s) > 1)


def _name_key(name: str) -> str:
    """Two names with one key may be one file: case-insensitive (Windows, macOS) and normalising (macOS) file
    systems."""
    return unicodedata.normalize("NFC", name).casefold()


def assign_output_names(records: list[SourceRecord]) -> None:
    """Give every kept record its own file name in OUT/split/label/, deterministically in record order.

    Converted images become PNG (`x.tif` -> `x.png`), so `x.png` and `x.tif` would share one name, and so would
    `X.jpeg` and `x.jpeg` on a case-insensitive disk; later ones get `x-2.png`, `x-3.png`, ...
    """
    taken: set[tuple[str, str, str]] = set()
    for record in records:
        if not record.kept:
            continue
        name = record.source_file
        stem, suffix = os.path.splitext(name)
        if record.needs_conversion:
            suffix = ".png"
        elif suffix.lower() not in IMAGE_EXTENSIONS:  # e.g. a JPEG named x.dat: the ImageFolder loader skips it
            stem, suffix = name, {"PNG": ".png"}.get(record.format or "", ".jpeg")
        candidate, number = stem + suffix, 1
        while (record.split, record.label, _name_key(candidate)) in taken:
            number += 1
            candidate = f"{stem}-{number}{suffix}"
        taken.add((record.split, record.label, _name_key(candidate)))
        record.output_name = candidate


def _copy_new(source: Path, target: Path) -> None:
    """Copy into a file that must not exist yet: an existing target (which may be a hard link to a user's file) is
    never opened for writing."""
    with source.open("rb") as reader, target.open("xb") as writer:
        shutil.copyfileobj(reader, writer)


def _materialise(record: SourceRecord, image_root: Path, out_dir: Path, max_pixels: int) -> tuple[str, str]:
    """Place one kept image in the ImageFolder: hard link, copy, or convert. Returns (relative path, action).

    Every output file is created new (O_EXCL): never written through an existing name, so never into a source
    image that an earlier hard link shares.
    """
    source = _source_path(record, image_root)
    target_dir = out_dir / record.split / record.label
    target = target_dir / record.output_name
    if target.parent != target_dir or record.output_name in ("", ".", ".."):
        raise ImageProblem(f"unsafe output name {printable(record.output_name)!r}")  # unreachable after the checks
    relative = str(target.relative_to(out_dir))
    try:
        if record.needs_conversion:
            image = load_standard_image(source, max_pixels=max_pixels)
            with target.open("xb") as handle:
                image.save(handle, format="PNG")
            return relative, f"converted {record.mode}->{image.mode} PNG"
        try:
            os.link(source, target)
            return relative, "hard link"
        except FileExistsError:
            raise
        except OSError:  # another file system, or links not allowed
            _copy_new(source, target)
            return relative, "copy"
    except FileExistsError:
        raise ImageProblem(f"output name {relative} is already taken (a file system that folds names?)") from None


def _skip_kind(reason: str) -> str:
    """Short bucket for the summary ("excluded class: bacteria", "corrupt or truncated image", ...)."""
    return reason.split(" (")[0].split(":")[0] if not reason.startswith("excluded class") else reason


def _print_tables(summary: PrepareSummary, echo) -> None:
    echo("Class hierarchy of the source CSV (as the study's Table 1):")
    echo(f"  {'Label':<10} {'Label_1_Virus_category':<24} {'Label_2_Virus_category':<24} {'count':>6}")
    for (label, label_1, label_2), count in sorted(summary.hierarchy.items()):
        echo(f"  {label or '-':<10} {label_1 or '-':<24} {label_2 or '-':<24} {count:>6}")
    echo("Binary classes per split (kept images):")
    echo(f"  {'split':<11} " + " ".join(f"{c:>7}" for c in CLASS_NAMES) + f" {'total':>7}")
    for split in SPLITS:
        row = summary.counts[split]
        echo(f"  {split:<11} " + " ".join(f"{row[c]:>7}" for c in CLASS_NAMES) + f" {sum(row.values()):>7}")
    skipped_total = sum(summary.skipped.values())
    echo(f"Kept {summary.kept_total} images; skipped {skipped_total}:")
    for reason, count in summary.skipped.most_common():
        echo(f"  {count:>5}  {reason}")


def _prepare_records(rows: list[dict[str, str]], csv_path: Path, image_root: Path, echo) -> list[SourceRecord]:
    """Labels, groups and duplicate handling for the CSV rows, plus files on disk that the CSV does not list."""
    records: list[SourceRecord] = []
    first_by_name: dict[str, SourceRecord] = {}
    for line_number, row in enumerate(rows, start=2):
        name = row["X_ray_image_name"]
        record = SourceRecord(source_file=name, csv_fields={k: row.get(k, "") for k in REQUIRED_COLUMNS},
                              csv_row=line_number - 1)
        records.append(record)
        record.group = patient_group(name)
        dataset_type = row["Dataset_type"].upper()
        shown = printable(name)
        if not name:
            record.reason = f"{csv_path.name} line {line_number}: empty X_ray_image_name"
        elif unsafe := unsafe_name_reason(name):
            record.reason = unsafe
        elif dataset_type not in SOURCE_FOLDERS:
            record.reason = f"unknown Dataset_type {printable(row['Dataset_type'])!r} (expected TRAIN or TEST)"
        elif name in first_by_name:
            first = first_by_name[name]
            record.reason = f"duplicate: {shown} listed twice in {csv_path.name} (first kept)"
            if (first.csv_fields["Label"], first.csv_fields["Label_1_Virus_category"]) != (
                row["Label"], row["Label_1_Virus_category"]):
                record.reason = f"duplicate: {shown} listed twice in {csv_path.name} with conflicting labels"
                if first.kept:
                    first.reason = record.reason
        else:
            first_by_name[name] = record
            record.label, record.reason = binary_label(row["Label"], row["Label_1_Virus_category"])
            record.split = "test" if dataset_type == "TEST" else "train"
    for folder in SOURCE_FOLDERS.values():
        directory = image_root / folder
        if not directory.is_dir():
            echo(f"warning: {directory} is missing; rows of that split will be reported as missing files")
            continue
        for path in sorted(directory.iterdir()):
            if path.name in first_by_name:
                continue
            if path.is_dir() and not path.is_symlink():
                reason = "a folder: images in sub-folders of the split folder are not read"
            else:  # files, and links (broken ones too): nothing on disk disappears without a line in the manifest
                reason = "not listed in the CSV"
            records.append(SourceRecord(source_file=path.name, csv_fields={"Dataset_type": folder.upper()},
                                        group=patient_group(path.name), reason=reason))
    return records


def _read_marker(folder: Path) -> dict | None:
    """The content of hfxray's marker in `folder`, or None when the folder is not (wholly) hfxray's."""
    marker = folder / MARKER_NAME
    try:
        if folder.is_symlink() or marker.is_symlink() or not marker.is_file():
            return None
        content = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) and content.get("kind") == MARKER_KIND else None


def _write_marker(folder: Path, complete: bool) -> None:
    temporary = folder / f"{MARKER_NAME}.tmp"
    with temporary.open("w", encoding="utf-8") as handle:
        handle.write(json.dumps({"kind": MARKER_KIND, "complete": complete}) + "\n")
    os.replace(temporary, folder / MARKER_NAME)


def _delete_own(folder: Path) -> bool:
    """Delete `folder` if it is hfxray's (marker) or empty; the marker goes last, so that a deletion cut short
    is still recognised, and finished, by the next run. Returns False (nothing deleted) otherwise."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    if _read_marker(folder) is None:
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


def _leftovers(out: Path, kind: str) -> list[Path]:
    """Sibling folders `.OUT.partial-*` / `.OUT.old-*` of earlier runs that were killed, newest first."""
    prefix = f".{out.name}.{kind}-"
    found = [p for p in out.parent.iterdir() if p.name.startswith(prefix) and p.is_dir() and not p.is_symlink()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def _new_sibling(out: Path, kind: str) -> Path:
    """A new empty folder `.OUT.kind-XXXXXXXX` next to OUT, with the umask's permissions (mkdtemp's 0700 would
    make the swapped-in output unreadable to the rest of a team)."""
    while True:
        folder = out.parent / f".{out.name}.{kind}-{secrets.token_hex(4)}"
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue


def _exchange(first: Path, second: Path) -> bool:
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


def _swap_into_place(staging: Path, out: Path) -> Path | None:
    """Put the complete `staging` at `out`. At every instant `out` holds the complete old or the complete new
    output: one atomic exchange where the system has it; otherwise two renames, and a run killed between them is
    recovered by `_recover` on the next run. Returns the folder now holding the old output (to delete), if any."""
    if not out.exists():
        staging.rename(out)
        return None
    if _exchange(staging, out):
        return staging
    retired = _new_sibling(out, "old")
    retired.rmdir()
    out.rename(retired)
    staging.rename(out)
    return retired


def _recover(out: Path, echo) -> None:
    """A run killed between the two renames of the swap left no OUT: put the previous output back."""
    if out.exists() or out.is_symlink():
        return
    for retired in _leftovers(out, "old"):
        marker = _read_marker(retired)
        if marker and marker.get("complete"):
            retired.rename(out)
            echo(f"warning: an earlier run was interrupted while replacing {out}; its previous output was restored")
            return


def _clean_leftovers(out: Path, echo) -> None:
    for leftover in _leftovers(out, "partial") + _leftovers(out, "old"):
        if not _delete_own(leftover):
            echo(f"warning: {printable(str(leftover))} is not hfxray's output; left in place")


@contextmanager
def _locked(folder: Path):
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
            raise DataError(f"{printable(str(folder))}: another `hfxray data prepare` is writing there. To fix: wait "
                            "for it to finish, or choose another --out.") from None
        except OSError:  # a file system without locks: go on unlocked
            pass
        yield
    finally:
        os.close(descriptor)


def _check_paths(source: Path, out: Path) -> None:
    """Refuse an OUT whose replacement could delete or alter what hfxray did not write (before anything is read)."""
    for flag, path in (("--source", source), ("--out", out)):
        if "\0" in str(path):
            raise DataError(f"{flag} {printable(str(path))}: NUL byte in the path. To fix: pass a real folder path.")
    shown = printable(str(out))
    if not source.is_dir():
        raise DataError(f"{printable(str(source))}: source folder not found. To fix: pass the unzipped Kaggle "
                        "CoronaHack folder.")
    if out.is_symlink():
        raise DataError(f"--out {shown} is a symbolic link; replacing it would delete the link. To fix: pass a new "
                        "folder, or the real path of an earlier output.")
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {shown} is an existing file, not a folder. To fix: pass a new folder path.")
    real_out = out.resolve()
    protected = [source.resolve()] + [(source / IMAGE_ROOT / f).resolve() for f in SOURCE_FOLDERS.values()]
    for real in protected:
        if real_out == real or real_out in real.parents or real in real_out.parents:
            relation = ("is" if real_out == real else "contains" if real_out in real.parents else "lies inside")
            raise DataError(f"--out {shown} {relation} the source data ({printable(str(real))}); the source is never "
                            "written to. To fix: pass an --out folder outside --source, e.g. next to it.")
    try:
        cwd = Path.cwd().resolve()
    except OSError:
        cwd = None
    if cwd is not None and (real_out == cwd or real_out in cwd.parents):
        raise DataError(f"--out {shown} is the current folder or contains it; it would be replaced whole. To fix: "
                        "pass a new sub-folder, e.g. --out prepared.")


def _check_replaceable(out: Path) -> None:
    if out.is_dir() and any(out.iterdir()) and _read_marker(out) is None:
        raise DataError(f"--out {printable(str(out))} holds files and no {MARKER_NAME} marker, so it was not "
                        "written by `hfxray data prepare`; refusing to replace it. To fix: choose a new or empty "
                        "--out folder (an output of an older hfxray: delete it yourself first).")


def prepare(
    source: str | os.PathLike,
    out: str | os.PathLike,
    val_fraction: float = 0.15,
    seed: int = 42,
    min_side: int = 64,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    echo=print,
    progress=None,
) -> PrepareSummary:
    """Build OUT/{train,validation,test}/{normal,virus}/ and OUT/manifest.csv from a Kaggle CoronaHack folder.

    Nothing under `source` is opened for writing, and nothing outside `out` is changed: the output is written to
    a sibling staging folder and swapped in at the end, so an interrupted run leaves the previous output whole.
    An existing OUT is replaced only when it carries hfxray's marker (or is empty).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val-fraction {val_fraction} is outside [0, 1). To fix: pass e.g. --val-fraction 0.15")
    if progress is None:
        from tqdm.auto import tqdm as progress
    source, out = Path(source), Path(out)
    _check_paths(source, out)
    out = out.resolve()  # `--out x/..` or a trailing `.`: work on the real name, whose siblings hold the staging
    out.parent.mkdir(parents=True, exist_ok=True)
    with _locked(out.parent):
        _recover(out, echo)
        _clean_leftovers(out, echo)
        _check_replaceable(out)
        summary = _prepare_locked(source, out, val_fraction, seed, min_side, max_pixels, echo, progress)
    _print_tables(summary, echo)
    for message in summary.warnings:
        echo(f"warning: {message}")
    echo(f"ImageFolder written to {printable(str(out))} (manifest: {printable(str(out / MANIFEST_NAME))})")
    return summary


def _manifest_row(record: SourceRecord, relative: str, action: str) -> dict[str, str]:
    fields = record.csv_fields
    row = {
        "file": relative, "label": record.label or "", "split": record.split if record.kept else "",
        "patient_group": record.group, "status": "kept" if record.kept else "skipped",
        "reason": record.reason, "action": action, "source_file": record.source_file,
        **{k: fields.get(k, "") for k in REQUIRED_COLUMNS if k != "X_ray_image_name"},
        "width": record.width or "", "height": record.height or "", "mode": record.mode,
        "csv_row": record.csv_row or "", "window": record.window,
    }
    return {k: printable(v) if isinstance(v, str) else v for k, v in row.items()}


def _prepare_locked(source: Path, out: Path, val_fraction: float, seed: int, min_side: int, max_pixels: int,
                    echo, progress) -> PrepareSummary:
    csv_path = source / CSV_NAME
    image_root = source / IMAGE_ROOT
    records = _prepare_records(read_metadata(csv_path), csv_path, image_root, echo)
    _check_files(records, image_root, min_side, max_pixels, progress)

    warnings_list: list[str] = []
    shared = _patients_in_train_and_test(records)
    if shared:
        warnings_list.append(f"{len(shared)} patient group(s) appear in both TRAIN and TEST of the source "
                             f"(e.g. {printable(', '.join(shared[:5]))}); the source split leaks these patients")
    small = sum(1 for r in records if r.kept and min(r.width, r.height) < TYPICAL_CROP)
    if small:
        warnings_list.append(f"{small} kept image(s) are smaller than a {TYPICAL_CROP} px crop; the processors "
                             "upscale them (see `width`/`height` in the manifest)")
    assign_validation(records, val_fraction, seed)
    assign_output_names(records)

    staging = _new_sibling(out, "partial")
    try:
        _write_marker(staging, complete=False)
        for split in SPLITS:
            for label in CLASS_NAMES:
                (staging / split / label).mkdir(parents=True)
        counts: dict[str, Counter] = {split: Counter() for split in SPLITS}
        skipped: Counter = Counter()
        hierarchy: Counter = Counter()
        with (staging / MANIFEST_NAME).open("x", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS)
            writer.writeheader()
            for record in progress(records, desc="writing ImageFolder", unit="img"):
                fields = record.csv_fields
                if "Label" in fields:
                    hierarchy[tuple(printable(fields[k]) for k in
                                    ("Label", "Label_1_Virus_category", "Label_2_Virus_category"))] += 1
                relative, action = "", ""
                if record.kept:
                    try:
                        relative, action = _materialise(record, image_root, staging, max_pixels)
                    except ImageProblem as problem:
                        record.reason = str(problem)
                if record.kept:
                    counts[record.split][record.label] += 1
                else:
                    skipped[printable(_skip_kind(record.reason))] += 1
                writer.writerow(_manifest_row(record, relative, action))
        summary = PrepareSummary(out, counts, skipped, hierarchy, warnings_list)
        if summary.kept_total == 0:
            raise DataError(f"{printable(str(csv_path))}: no usable normal or virus image remains (skipped: "
                            f"{dict(skipped.most_common(3))}). To fix: check that images sit in "
                            f"{printable(str(image_root))}/{{train,test}}/")
        _write_marker(staging, complete=True)
        retired = _swap_into_place(staging, out)
        if retired is not None and not _delete_own(retired):
            echo(f"warning: the previous content of {printable(str(out))} was moved to "
                 f"{printable(str(retired))}; delete it when no longer needed")
    finally:
        if staging.exists():
            _delete_own(staging)
    return summary


def read_manifest(data_dir: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of a prepared folder's manifest.csv (kept and skipped)."""
    with (Path(data_dir) / MANIFEST_NAME).open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def kept_counts(rows: list[dict[str, str]]) -> dict[str, Counter]:
    """split -> label -> kept images, from manifest rows (every split present, possibly empty)."""
    counts: dict[str, Counter] = {split: Counter() for split in SPLITS}
    for row in rows:
        if row["status"] == "kept":
            counts[row["split"]][row["label"]] += 1
    return counts


def check_prepared(data_dir: str | os.PathLike) -> Path:
    """Raise DataError unless `data_dir` looks like the output of `hfxray data prepare`."""
    data_dir = Path(data_dir)
    missing = [s for s in ("train", "test") if not (data_dir / s).is_dir()]
    if not data_dir.is_dir() or missing or not (data_dir / MANIFEST_NAME).is_file():
        if (data_dir / CSV_NAME).is_file():  # the raw download itself: prepare it into a new folder beside it
            target = data_dir.parent / f"{data_dir.name}-prepared"
            raise DataError(f"{data_dir} is the raw CoronaHack download, not a prepared ImageFolder. To fix: run "
                            f"`hfxray data prepare --source {data_dir} --out {target}` and pass {target}")
        raise DataError(
            f"{data_dir}: {'no such folder' if not data_dir.exists() else 'not a prepared ImageFolder'} (needs "
            f"train/, test/ and {MANIFEST_NAME}). To fix: run `hfxray data prepare --source SOURCE_DIR --out "
            f"{data_dir}`, or pass the --out folder of an earlier `hfxray data prepare`."
        )
    return data_dir


def _count_images(folder: Path) -> int:
    try:
        with os.scandir(folder) as entries:
            return sum(1 for e in entries if os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS and e.is_file())
    except (FileNotFoundError, NotADirectoryError):
        return 0


def check_classes(data_dir: str | os.PathLike) -> dict[str, Counter]:
    """Raise DataError unless train and test (and validation, when it has images) hold both classes.

    A split with one class trains "fine" and then reports meaningless AUROC, sensitivity and temperature; refusing
    it here fails before any training time is spent. Returns split -> label -> images found on disk.
    """
    data_dir = Path(data_dir)
    counts = {split: Counter({label: _count_images(data_dir / split / label) for label in CLASS_NAMES})
              for split in SPLITS}
    problems = []
    for split, row in counts.items():
        if split == "validation" and not sum(row.values()):
            continue  # no validation split at all: reported by the trainer, which needs one
        missing = [label for label in CLASS_NAMES if not row[label]]
        if missing:
            problems.append(f"{split} has no {' and no '.join(missing)} image")
    if problems:
        raise DataError(f"{printable(str(data_dir))}: {'; '.join(problems)}; every split needs both classes for "
                        "training and its metrics. To fix: prepare from a source with normal and virus images in "
                        "TRAIN and TEST (and enough TRAIN patients for --val-fraction), then re-run `hfxray data "
                        "prepare`.")
    return counts


def load_imagefolder(data_dir: str | os.PathLike):
    """The prepared folder as a datasets DatasetDict (`image`, `label` with names normal/virus)."""
    data_dir = check_prepared(data_dir)
    check_classes(data_dir)
    from datasets import load_dataset

    dataset = load_dataset("imagefolder", data_dir=str(data_dir))
    names = dataset["train"].features["label"].names
    if tuple(names) != CLASS_NAMES:
        raise DataError(f"{data_dir}: label folders are {names}, expected {list(CLASS_NAMES)}. To fix: re-run "
                        "`hfxray data prepare`.")
    return dataset
