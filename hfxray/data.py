"""Source folders -> one binary (normal / virus) ImageFolder split by patient.

The study split images at random, so X-rays of one child ended up in train and test. Here a source's TEST stays
TEST, a source without a test split has one carved by patient, and the validation split is carved out of TRAIN by
patient group (`patient_group`). Every source row ends up in `manifest.csv`, kept or skipped with its reason, so
that no data disappears silently. The layouts (CoronaHack CSV, Cohen collection, Kermany folders) are read by
`hfxray.sources`; several sources make one set whose manifest names each row's `source`, with the images that two
sources share, or one source holds under two names, found (`hfxray.duplicates`) and kept once.
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

from .cohen_groups import cohen_group
from .errors import HfxrayError, excerpt, printable
from .imaging import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageProblem, check_image, load_standard_image
from .logs import get_logger, library_progress_bars_off, progress_bar_disable
from .outputs import relation

CLASS_NAMES = ("normal", "virus")
SPLITS = ("train", "validation", "test")
POOL_SPLITS = ("train", "validation")  # what cross-validation and the refit train on; test is never pooled
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
    "source", "format", "finding", "view", "phash", "duplicate_of", "merged_with",
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
    """Patient key from a Kermany file name, else a Cohen collection patient or figure (`cohen_group`); any other
    file is its own group."""
    if match := KERMANY_PERSON.match(file_name):
        return f"person{int(match.group(1))}"
    if match := KERMANY_IM.match(file_name):
        return f"im{int(match.group(1)):04d}"
    return cohen_group(file_name) or f"file:{file_name}"


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


@dataclass
class PrepareSummary:
    out_dir: Path
    counts: dict[str, Counter]  # split -> label -> images
    skipped: Counter  # reason kind -> images
    hierarchy: Counter  # (Label, Label_1, Label_2) -> rows
    warnings: list[str]
    by_source: dict[str, Counter] = field(default_factory=dict)  # source -> (split, label) -> kept images
    skipped_by_source: dict[str, Counter] = field(default_factory=dict)  # source -> reason kind -> images
    merged: int = 0  # kept images dropped because another copy of the same picture is kept
    shared: int = 0  # copies found of a picture held twice (dropped, or excluded by their class)

    @property
    def kept_total(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())


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


def read_metadata(csv_path: Path) -> list[dict[str, str]]:
    """The Kaggle CoronaHack metadata CSV (see `read_csv_rows`)."""
    return read_csv_rows(csv_path, REQUIRED_COLUMNS,
                         f"the unzipped Kaggle CoronaHack folder that holds {CSV_NAME} and {IMAGE_ROOT}/",
                         "the original Kaggle metadata CSV")


def _source_path(record: SourceRecord) -> Path:
    if record.source_dir is None:  # unreachable for kept records: every reader sets the folder
        raise ImageProblem(f"no source folder for {printable(record.source_file)!r}")
    return record.source_dir / record.source_file


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


def _check_files(records: list[SourceRecord], min_side: int, max_pixels: int, progress) -> None:
    first_by_inode: dict[tuple[str, int, int], str] = {}
    for record in progress(records, desc="checking images", unit="img"):
        if not record.kept:
            continue
        path = _source_path(record)
        if reason := _link_problem(path, path.parent):
            record.reason = reason
            continue
        try:
            info = path.stat()
        except OSError:
            info = None  # check_image says why
        if info is not None:
            # One image under two names (a link) would count twice, and could sit in train and test at once.
            # (Copies under other names and re-encoded copies are found by `_merge_duplicates`.)
            first = first_by_inode.setdefault((record.source, info.st_dev, info.st_ino), record.source_file)
            if first != record.source_file:
                record.reason = f"duplicate: the same file as {printable(first)} (a link)"
                continue
        try:
            check = check_image(path, max_pixels=max_pixels, with_fingerprint=True)
        except ImageProblem as problem:
            record.reason = str(problem)
            continue
        record.width, record.height, record.mode = check.width, check.height, check.mode
        record.format, record.needs_conversion = check.format, check.needs_conversion
        record.window = check.window
        record.fingerprint = check.fingerprint
        if min(check.width, check.height) < min_side:
            record.reason = f"too small: {check.width}x{check.height} px, under --min-side {min_side}"


def assign_validation(records: list[SourceRecord], val_fraction: float, seed: int) -> None:
    """Move whole patient groups from train to validation, ~val_fraction of each class, deterministically."""
    carve(records, "train", "validation", val_fraction, seed)


def carve(records: list[SourceRecord], from_split: str, to_split: str, fraction: float, seed: int) -> None:
    """Move whole patient groups from `from_split` to `to_split`, ~fraction of each source's class.

    Each group counts for the source and class most of its images have; (source, class) pairs are filled one after
    the other by taking shuffled groups while that brings the pair's count closer to its target.
    """
    groups: dict[str, list[SourceRecord]] = defaultdict(list)
    for record in records:
        if record.kept and record.split == from_split:
            groups[record.group].append(record)
    by_class: dict[tuple[str, str], list[str]] = defaultdict(list)
    for group, members in sorted(groups.items()):
        majority = Counter((r.source, r.label) for r in members).most_common(1)[0][0]
        by_class[majority].append(group)
    rng = random.Random(seed)
    for label in sorted(by_class):
        candidates = by_class[label]
        rng.shuffle(candidates)
        target = fraction * sum(len(groups[g]) for g in candidates)
        taken = 0
        for group in candidates:
            size = len(groups[group])
            if abs(taken + size - target) < abs(taken - target):
                taken += size
                for record in groups[group]:
                    record.split = to_split


def _patients_in_train_and_test(records: list[SourceRecord]) -> list[str]:
    splits_by_group: dict[str, set[str]] = defaultdict(set)
    for record in records:
        if record.kept:
            splits_by_group[record.group].add("test" if record.split == "test" else "train")
    return sorted(g for g, s in splits_by_group.items() if len(s) > 1)


class _Union:
    """Union-find over hashable items (patient groups, records)."""

    def __init__(self) -> None:
        self.parent: dict = {}

    def find(self, item):
        self.parent.setdefault(item, item)
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, first, second) -> None:
        self.parent[self.find(first)] = self.find(second)

    def classes(self) -> dict:
        members: dict = defaultdict(list)
        for item in list(self.parent):
            members[self.find(item)].append(item)
        return members


def _merge_duplicates(records: list[SourceRecord], order: list[str], test_source: str | None,
                      max_pixels: int, progress) -> tuple[int, int]:
    """Keep once each picture held twice, by two sources or by one under two names (`hfxray.duplicates`: identical
    bytes, or a close perceptual hash confirmed by the thumbnails' correlation). The copy kept is the held-out test
    source's (`test_source`), else the first source's in `order`, and within a source the one in its test split,
    else the first listed; the others are skipped as duplicates, and their patient groups join the kept one's, so
    that the picture and its patients sit in one split (unless a source's own TEST split stands between them:
    warned after the splits are assigned). Images excluded by their class are compared too,
    so that the manifest lists every copy; a picture kept once and excluded (or labelled otherwise) elsewhere is a
    conflict and skipped everywhere. Returns (kept copies dropped, copies found)."""
    from .duplicates import fingerprint, find_same_pictures

    kept = [r for r in records if r.kept or (r.reason.startswith(("excluded class", "excluded finding"))
                                             and r.source_dir is not None)]
    prints = []
    for record in progress(kept, desc="hashing images", unit="img"):
        path = _source_path(record)
        try:
            if problem := _link_problem(path, path.parent):  # excluded files were not checked by _check_files
                raise ImageProblem(problem)
            print_ = record.fingerprint or fingerprint(path, max_pixels)
        except ImageProblem as problem:  # what decoding the full image finds (NaN pixels...), as writing it would
            if record.kept:
                record.reason = str(problem)
            print_ = None
        except OSError as problem:
            if record.kept:
                record.reason = f"unreadable while hashing: {excerpt(problem)}"
            print_ = None
        prints.append(print_)
        record.phash = f"{print_.phash:016x}" if print_ else ""
    union = _Union()
    evidence: dict[tuple[int, int], str] = {}
    for (a, b), why in find_same_pictures(prints).items():
        evidence[(a, b)] = evidence[(b, a)] = why
        union.union(a, b)
    dropped = 0
    rank = {name: position for position, name in enumerate(order)}
    for members in union.classes().values():
        if len(members) < 2:
            continue
        members.sort(key=lambda i: (kept[i].source != test_source, rank[kept[i].source], kept[i].split != "test", i))
        keeper = kept[members[0]]
        if len({kept[i].label for i in members}) > 1:
            shown = ", ".join(f"{printable(kept[i].source)}/{printable(kept[i].source_file)}" for i in members)
            for i in members:
                if kept[i].kept:
                    kept[i].reason = f"duplicate with conflicting labels ({shown})"
            continue
        for i in members[1:]:
            record = kept[i]
            how = evidence.get((members[0], i))
            if how is None:  # a copy of a copy: name the link that was found
                j = next(j for j in members if (i, j) in evidence)
                how = f"{evidence[(i, j)]} with {printable(kept[j].source)}/{printable(kept[j].source_file)}"
            record.duplicate_of = f"{keeper.source}/{keeper.source_file}"
            keeper.merged_with.append(f"{record.source}/{record.source_file}")
            keeper.also_groups.append(record.group)
            if record.kept:
                record.reason = (f"duplicate: the same image as {printable(keeper.source)}/"
                                 f"{printable(keeper.source_file)} ({how})")
                dropped += 1
    return dropped, sum(1 for record in kept if record.duplicate_of)


def _join_groups(records: list[SourceRecord]) -> None:
    """Patient groups that share an image become one group, named by its members joined with "+"."""
    union = _Union()
    for record in records:
        union.find(record.group)
        for other in record.also_groups:
            union.union(record.group, other)
    names = {root: "+".join(sorted(members)) for root, members in union.classes().items()}
    for record in records:
        record.group = names[union.find(record.group)]


def assign_splits(records: list[SourceRecord], val_fraction: float, test_fraction: float, seed: int,
                  test_source: str | None = None) -> None:
    """train / validation / test for every kept record, by patient group.

    With `test_source`, that source is the whole test split and the others are train (their own test splits
    folded in); images of the other sources whose patient group reaches into the test source are skipped.
    Otherwise each source keeps its own test split; a source without one (Cohen) has ~test_fraction of each class's
    patients carved into test. A group that spans sources follows its test member, else its train member.
    Validation is then carved out of train by patient.
    """
    kept = [r for r in records if r.kept]
    by_group: dict[str, list[SourceRecord]] = defaultdict(list)
    for record in kept:
        by_group[record.group].append(record)
    if test_source is not None:
        for members in by_group.values():
            held_out = any(r.source == test_source for r in members)
            for record in members:
                if record.source == test_source:
                    record.split = "test"
                elif held_out:
                    record.reason = (f"same patient group as a test image of the held-out source "
                                     f"{printable(test_source)} (--test-source)")
                else:
                    record.split = "train"
    else:
        for members in by_group.values():
            splits = {r.split for r in members}
            spans_sources = len({r.source for r in members}) > 1  # within one source, its own split stands
            fixed = "test" if "test" in splits else "train" if "train" in splits else "pending"
            for record in members:
                if spans_sources or not record.split:
                    record.split = fixed
        carve(records, "pending", "test", test_fraction, seed)
        for record in kept:
            if record.split == "pending":
                record.split = "train"
    assign_validation(records, val_fraction, seed)


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


def _materialise(record: SourceRecord, out_dir: Path, max_pixels: int) -> tuple[str, str]:
    """Place one kept image in the ImageFolder: hard link, copy, or convert. Returns (relative path, action).

    Every output file is created new (O_EXCL): never written through an existing name, so never into a source
    image that an earlier hard link shares.
    """
    source = _source_path(record)
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
    if reason.startswith("excluded "):
        return reason
    return reason.split(" (")[0] if reason.startswith("unknown finding") else reason.split(" (")[0].split(":")[0]


def _print_tables(summary: PrepareSummary, echo) -> None:
    if summary.hierarchy:
        echo("Class hierarchy of the source CSV (as the study's Table 1):")
        echo(f"  {'Label':<10} {'Label_1_Virus_category':<24} {'Label_2_Virus_category':<24} {'count':>6}")
        for (label, label_1, label_2), count in sorted(summary.hierarchy.items()):
            echo(f"  {label or '-':<10} {label_1 or '-':<24} {label_2 or '-':<24} {count:>6}")
    if len(summary.by_source) > 1:
        echo("Kept images per source (split: normal/virus):")
        for name, row in summary.by_source.items():
            cells = "  ".join(f"{split} {row[(split, 'normal')]}/{row[(split, 'virus')]}" for split in SPLITS)
            echo(f"  {printable(name):<16} {cells}  skipped {sum(summary.skipped_by_source[name].values())}")
    if summary.shared:
        echo(f"Copies of a picture found (in two sources, or under two names): {summary.shared} (manifest: "
             f"duplicate_of, merged_with); {summary.merged} of them usable and dropped, the picture kept once; "
             "the others excluded by their class")
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
        if row["Dataset_type"].upper() in SOURCE_FOLDERS:
            record.source_dir = image_root / SOURCE_FOLDERS[row["Dataset_type"].upper()]
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
                                        group=patient_group(path.name), reason=reason, source_dir=directory))
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


def _check_paths(sources: list[Path], out: Path) -> None:
    """Refuse an OUT whose replacement could delete or alter what hfxray did not write (before anything is read)."""
    for flag, path in [*(("--source", source) for source in sources), ("--out", out)]:
        if "\0" in str(path):
            raise DataError(f"{flag} {printable(str(path))}: NUL byte in the path. To fix: pass a real folder path.")
    shown = printable(str(out))
    for source in sources:
        if not source.is_dir():
            raise DataError(f"{printable(str(source))}: source folder not found. To fix: pass the unzipped folder "
                            "of a CoronaHack, Cohen or Kermany download.")
    if out.is_symlink():
        raise DataError(f"--out {shown} is a symbolic link; replacing it would delete the link. To fix: pass a new "
                        "folder, or the real path of an earlier output.")
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {shown} is an existing file, not a folder. To fix: pass a new folder path.")
    real_out = out.resolve()
    protected = [path.resolve() for source in sources
                 for path in [source, *(source / f for folder in _read_folders(source) for f in [folder])]]
    for real in protected:
        if found := relation(real_out, real):
            found = {"holds": "contains"}.get(found, found)
            raise DataError(f"--out {shown} {found} the source data ({printable(str(real))}); the source is never "
                            "written to. To fix: pass an --out folder outside --source, e.g. next to it.")
    try:
        cwd = Path.cwd().resolve()
    except OSError:
        cwd = None
    if cwd is not None and (real_out == cwd or real_out in cwd.parents):
        raise DataError(f"--out {shown} is the current folder or contains it; it would be replaced whole. To fix: "
                        "pass a new sub-folder, e.g. --out prepared.")


def _read_folders(source: Path) -> list[Path]:
    """Every folder a layout could read images from, whatever the format (relative to `source`)."""
    from .sources import COHEN_IMAGES, KERMANY_SPLITS

    folders = [IMAGE_ROOT / f for f in SOURCE_FOLDERS.values()] + [Path(COHEN_IMAGES)]
    return folders + [Path(prefix) / split for prefix in ("", "chest_xray") for split in KERMANY_SPLITS]


def _check_replaceable(out: Path) -> None:
    if out.is_dir() and any(out.iterdir()) and _read_marker(out) is None:
        raise DataError(f"--out {printable(str(out))} holds files and no {MARKER_NAME} marker, so it was not "
                        "written by `hfxray data prepare`; refusing to replace it. To fix: choose a new or empty "
                        "--out folder (an output of an older hfxray: delete it yourself first).")
    if out.is_dir() and (foreign := _first_foreign(out)):
        raise DataError(f"--out {printable(str(out))} is an earlier output of `hfxray data prepare`, but "
                        f"{printable(str(foreign))} in it is not (a training run or notes written into it?); "
                        "replacing the folder would delete it. To fix: move it out of --out, or choose a new --out.")


def _first_foreign(out: Path) -> Path | None:
    """The first entry of a marked output that `prepare` did not write: only the marker, the manifest, the split
    and class folders and the images the manifest lists belong to it."""
    try:
        listed = {row["file"] for row in read_manifest(out) if row.get("file")}
    except (DataError, OSError, KeyError):
        listed = set()
    for root, dirs, files in os.walk(out):
        relative = Path(root).relative_to(out)
        depth = len(relative.parts)
        for name in sorted(dirs):
            if not ((depth == 0 and name in SPLITS) or (depth == 1 and name in CLASS_NAMES)):
                return relative / name
        for name in sorted(files):
            path = relative / name
            if not ((depth == 0 and name in (MARKER_NAME, MANIFEST_NAME)) or (depth == 2 and str(path) in listed)):
                return path
    return None


def prepare(
    source: str | os.PathLike | list[str | os.PathLike],
    out: str | os.PathLike,
    val_fraction: float = 0.15,
    seed: int = 42,
    min_side: int = 64,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    echo=print,
    progress=None,
    formats: list[str] | None = None,
    test_source: str | None = None,
    test_fraction: float = 0.15,
) -> PrepareSummary:
    """Build OUT/{train,validation,test}/{normal,virus}/ and OUT/manifest.csv from one or more source folders.

    `source` is a folder or a list of folders; `formats` names each one's layout (`hfxray.sources.FORMATS`,
    default: detected). `test_source` (a source's name) makes that source the whole test split. A source without
    its own test split has ~`test_fraction` of its patients carved into test.

    Nothing under a source is opened for writing, and nothing outside `out` is changed: the output is written to
    a sibling staging folder and swapped in at the end, so an interrupted run leaves the previous output whole.
    An existing OUT is replaced only when it carries hfxray's marker (or is empty).
    """
    from .sources import resolve_sources

    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val-fraction {val_fraction} is outside [0, 1). To fix: pass e.g. --val-fraction 0.15")
    if not 0.0 <= test_fraction < 1.0:
        raise DataError(f"--test-fraction {test_fraction} is outside [0, 1). To fix: pass e.g. --test-fraction 0.15")
    if min_side < 1:
        raise DataError(f"--min-side {min_side}: a side is at least 1 px. To fix: pass e.g. --min-side 64, or 1 to "
                        "keep images of any size.")
    if progress is None:
        from functools import partial

        from tqdm.auto import tqdm

        progress = partial(tqdm, disable=progress_bar_disable())
    paths = [Path(p) for p in (source if isinstance(source, (list, tuple)) else [source])]
    if not paths:
        raise DataError("no --source given. To fix: pass --source FOLDER (repeat it to merge several sources).")
    out = Path(out)
    _check_paths(paths, out)
    specs = resolve_sources(paths, formats)
    names = [spec.name for spec in specs]
    if test_source is not None and (test_source not in names or len(specs) < 2):
        raise DataError(f"--test-source {printable(test_source)!r} is not one of several sources (sources: "
                        f"{printable(', '.join(names))}). To fix: pass two or more --source folders and name one "
                        "of them, as the manifest's `source` column does.")
    out = out.resolve()  # `--out x/..` or a trailing `.`: work on the real name, whose siblings hold the staging
    out.parent.mkdir(parents=True, exist_ok=True)
    with _locked(out.parent):
        _recover(out, echo)
        _clean_leftovers(out, echo)
        _check_replaceable(out)
        summary = _prepare_locked(specs, out, val_fraction, test_fraction, seed, min_side, max_pixels, test_source,
                                  echo, progress)
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
        "source": record.source, "format": record.source_format, "finding": record.finding, "view": record.view,
        "phash": record.phash, "duplicate_of": record.duplicate_of, "merged_with": " ".join(record.merged_with),
    }
    return {k: printable(v) if isinstance(v, str) else v for k, v in row.items()}


def _prepare_locked(specs, out: Path, val_fraction: float, test_fraction: float, seed: int, min_side: int,
                    max_pixels: int, test_source: str | None, echo, progress) -> PrepareSummary:
    from .sources import read_source

    records: list[SourceRecord] = []
    for spec in specs:
        found = read_source(spec, echo)
        if len(specs) > 1:  # patient ids of two sources are unrelated: keep them apart
            for record in found:
                record.group = f"{spec.name}:{record.group}"
                record.also_groups = [f"{spec.name}:{g}" for g in record.also_groups]
        records += found
    _check_files(records, min_side, max_pixels, progress)

    warnings_list: list[str] = []
    merged, shared_images = _merge_duplicates(records, [spec.name for spec in specs], test_source, max_pixels,
                                              progress)
    _join_groups(records)
    small = sum(1 for r in records if r.kept and min(r.width, r.height) < TYPICAL_CROP)
    if small:
        warnings_list.append(f"{small} kept image(s) are smaller than a {TYPICAL_CROP} px crop; the processors "
                             "upscale them (see `width`/`height` in the manifest)")
    assign_splits(records, val_fraction, test_fraction, seed, test_source)
    # Checked on the final splits: a source's own TEST split stands, so a patient it puts on both sides, or two
    # patients joined by one picture held under two names in TRAIN and TEST, stay on both sides.
    if shared := _patients_in_train_and_test(records):
        warnings_list.append(f"{len(shared)} patient group(s) appear in both TRAIN and TEST of the source, directly "
                             f"or through a picture it holds twice (e.g. {printable(', '.join(shared[:5]))}); the "
                             "source split stands, so these patients leak into the test split")
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
        by_source: dict[str, Counter] = {spec.name: Counter() for spec in specs}
        skipped_by_source: dict[str, Counter] = {spec.name: Counter() for spec in specs}
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
                        relative, action = _materialise(record, staging, max_pixels)
                    except ImageProblem as problem:
                        record.reason = str(problem)
                if record.kept:
                    counts[record.split][record.label] += 1
                    by_source[record.source][(record.split, record.label)] += 1
                else:
                    skipped[printable(_skip_kind(record.reason))] += 1
                    skipped_by_source[record.source][printable(_skip_kind(record.reason))] += 1
                writer.writerow(_manifest_row(record, relative, action))
        summary = PrepareSummary(out, counts, skipped, hierarchy, warnings_list, by_source, skipped_by_source,
                                 merged, shared_images)
        if summary.kept_total == 0:
            where = ", ".join(printable(str(spec.path)) for spec in specs)
            raise DataError(f"{where}: no usable normal or virus image remains (skipped: "
                            f"{dict(skipped.most_common(3))}). To fix: check that the images sit where the layout "
                            "puts them (CoronaHack: the image folders' train/ and test/; Cohen: images/; Kermany: "
                            "train|test|val/NORMAL|PNEUMONIA/)")
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


def prepared_counts(data_dir: str | os.PathLike) -> dict[str, Counter]:
    """`check_prepared` then `check_classes`: split -> label -> images on disk of a usable prepared folder, found
    without listing it through `datasets` (training and evaluation with a warm decode cache need no more)."""
    return check_classes(check_prepared(data_dir))


def load_imagefolder(data_dir: str | os.PathLike):
    """The prepared folder as a datasets DatasetDict (`image`, `label` with names normal/virus)."""
    counts = prepared_counts(data_dir)
    data_dir = Path(data_dir)
    from datasets import load_dataset

    # datasets 5.2 labels its bar for listing local files "Downloading data": nothing is downloaded, and a user
    # who was promised that their X-rays stay on this machine should not read that. One line says what happens.
    get_logger(__name__).info("Reading the prepared images in %s (%s)", printable(str(data_dir)),
                              ", ".join(f"{split} {sum(counts[split].values())}" for split in counts))
    with library_progress_bars_off():
        dataset = load_dataset("imagefolder", data_dir=str(data_dir))
    names = dataset["train"].features["label"].names
    if tuple(names) != CLASS_NAMES:
        raise DataError(f"{data_dir}: label folders are {names}, expected {list(CLASS_NAMES)}. To fix: re-run "
                        "`hfxray data prepare`.")
    return dataset
