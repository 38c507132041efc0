"""Source folders -> one binary (normal / virus) ImageFolder split by patient (`hfxray data prepare`).

The study split images at random, so X-rays of one child ended up in train and test. Here a source's TEST stays
TEST, a source without a test split has one carved by patient, and the validation split is carved out of TRAIN by
patient group (`splits`). Every source row ends up in `manifest.csv`, kept or skipped with its reason, so that no
data disappears silently. Several sources make one set whose manifest names each row's `source`, with the images
that two sources share, or one source holds under two names, found (`dedupe`) and kept once. The output is built
beside OUT and swapped in whole (`hfxray.outputs`).
"""

from __future__ import annotations

import csv
import os
import shutil
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..dicom import is_projection
from ..duplicates import fingerprint_image
from ..errors import printable
from ..imaging import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageProblem, check_image, load_standard_image
from ..logs import progress_bar_disable
from ..outputs import (MARKER_NAME, clean_leftovers, csv_row, delete_own, locked, new_sibling, read_marker,
                       recover, relation, swap_into_place, write_marker)
from .coronahack import REQUIRED_COLUMNS
from .dedupe import merge_duplicates
from .labels import CLASS_NAMES, SPLITS
from .layouts import read_folders, read_source, resolve_sources
from .manifest import MANIFEST_COLUMNS, MANIFEST_NAME, read_manifest
from .records import DataError, SourceRecord, link_problem, source_path
from .splits import assign_splits, join_groups, patients_in_train_and_test

TYPICAL_CROP = 224  # the full models' input size; smaller images are kept but reported


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


def _check_files(records: list[SourceRecord], min_side: int, max_pixels: int, progress) -> None:
    first_by_inode: dict[tuple[str, int, int], str] = {}
    for record in progress(records, desc="checking images", unit="img"):
        if not record.kept:
            continue
        path = source_path(record)
        if reason := link_problem(path, path.parent):
            record.reason = reason
            continue
        try:
            info = path.stat()
        except OSError:
            info = None  # check_image says why
        if info is not None:
            # One image under two names (a link) would count twice, and could sit in train and test at once.
            # (Copies under other names and re-encoded copies are found by `merge_duplicates`.)
            first = first_by_inode.setdefault((record.source, info.st_dev, info.st_ino), record.source_file)
            if first != record.source_file:
                record.reason = f"duplicate: the same file as {printable(first)} (a link)"
                continue
        try:
            check = check_image(path, max_pixels=max_pixels,
                                inspect=lambda standard: fingerprint_image(standard, path.read_bytes()))
        except ImageProblem as problem:
            record.reason = str(problem)
            continue
        record.width, record.height, record.mode = check.width, check.height, check.mode
        record.format, record.needs_conversion = check.format, check.needs_conversion
        record.window = check.window
        record.fingerprint = check.inspected
        if not is_projection(check.modality):  # predict flags a CT or MR image; training must not learn from one
            record.reason = f"excluded modality: DICOM {check.modality} (training keeps plain radiographs, CR/DX)"
            continue
        if min(check.width, check.height) < min_side:
            record.reason = f"too small: {check.width}x{check.height} px, under --min-side {min_side}"


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
    source = source_path(record)
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
    protected = [path.resolve() for source in sources for path in [source, *read_folders(source)]]
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


def _check_replaceable(out: Path) -> None:
    if out.is_dir() and any(out.iterdir()) and read_marker(out) is None:
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

    `source` is a folder or a list of folders; `formats` names each one's layout (`hfxray.data.layouts.FORMATS`,
    default: detected). `test_source` (a source's name) makes that source the whole test split. A source without
    its own test split has ~`test_fraction` of its patients carved into test.

    Nothing under a source is opened for writing, and nothing outside `out` is changed: the output is written to
    a sibling staging folder and swapped in at the end, so an interrupted run leaves the previous output whole.
    An existing OUT is replaced only when it carries hfxray's marker (or is empty).
    """
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
    with locked(out.parent):
        recover(out, echo)
        clean_leftovers(out, echo)
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
    merged, shared_images = merge_duplicates(records, [spec.name for spec in specs], test_source, max_pixels,
                                              progress)
    join_groups(records)
    small = sum(1 for r in records if r.kept and min(r.width, r.height) < TYPICAL_CROP)
    if small:
        warnings_list.append(f"{small} kept image(s) are smaller than a {TYPICAL_CROP} px crop; the processors "
                             "upscale them (see `width`/`height` in the manifest)")
    assign_splits(records, val_fraction, test_fraction, seed, test_source)
    # Checked on the final splits: a source's own TEST split stands, so a patient it puts on both sides, or two
    # patients joined by one picture held under two names in TRAIN and TEST, stay on both sides.
    if shared := patients_in_train_and_test(records):
        warnings_list.append(f"{len(shared)} patient group(s) appear in both TRAIN and TEST of the source, directly "
                             f"or through a picture it holds twice (e.g. {printable(', '.join(shared[:5]))}); the "
                             "source split stands, so these patients leak into the test split")
    assign_output_names(records)

    staging = new_sibling(out, "partial")
    try:
        write_marker(staging, complete=False)
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
                writer.writerow(csv_row(_manifest_row(record, relative, action)))  # formula cells quoted
        summary = PrepareSummary(out, counts, skipped, hierarchy, warnings_list, by_source, skipped_by_source,
                                 merged, shared_images)
        if summary.kept_total == 0:
            where = ", ".join(printable(str(spec.path)) for spec in specs)
            raise DataError(f"{where}: no usable normal or virus image remains (skipped: "
                            f"{dict(skipped.most_common(3))}). To fix: check that the images sit where the layout "
                            "puts them (CoronaHack: the image folders' train/ and test/; Cohen: images/; Kermany: "
                            "train|test|val/NORMAL|PNEUMONIA/)")
        write_marker(staging, complete=True)
        retired = swap_into_place(staging, out)
        if retired is not None and not delete_own(retired):
            echo(f"warning: the previous content of {printable(str(out))} was moved to "
                 f"{printable(str(retired))}; delete it when no longer needed")
    finally:
        if staging.exists():
            delete_own(staging)
    return summary
