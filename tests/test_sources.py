"""The Cohen and Kermany layouts, and several sources merged into one patient-level set, on the real samples."""

from __future__ import annotations

import csv
import io
import os
import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from PIL import Image

from hfxray import data
from hfxray.data import cohen, coronahack, layouts
from hfxray.cli import main as cli_main

QUIET = {"echo": lambda *_: None, "progress": lambda items, **_: items}
SHARED_WITH_CORONAHACK = 11  # images of the Cohen sample that the CoronaHack sample also holds


def kept(rows):
    return [r for r in rows if r["status"] == "kept"]


def groups_in_two_splits(rows) -> list[str]:
    splits = defaultdict(set)
    for row in kept(rows):
        splits[row["patient_group"]].add(row["split"])
    return sorted(g for g, s in splits.items() if len(s) > 1)


# --- the Cohen finding table ------------------------------------------------------------------------------------

@pytest.mark.parametrize("finding, expected", [
    ("No Finding", "normal"), ("COVID-19", "virus"), ("COVID-19, ARDS", "virus"), ("SARS", "virus"),
    ("MERS", "virus"), ("Varicella", "virus"), ("Influenza", "virus"), ("Herpes", "virus"),
    ("Pneumonia/Viral/COVID-19", "virus"), ("Streptococcus", None), ("Pneumonia/Bacterial/Klebsiella", None),
    ("Pneumocystis", None), ("Lipoid", None), ("ARDS", None), ("Pneumonia", None), ("todo", None),
    ("COVID-19, Streptococcus", None), ("No Finding, COVID-19", None), ("Martian flu", None), ("", None),
])
def test_cohen_findings_map_to_classes(finding, expected):
    label, reason = cohen.cohen_label(finding)
    assert label == expected
    assert bool(reason) == (expected is None)
    if finding == "Martian flu":
        assert reason.startswith("unknown finding: Martian flu")


# --- the Cohen sample alone -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cohen_prepared(cohen_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cohen") / "out"
    summary = data.prepare(cohen_dir, out, **QUIET)
    return summary, data.read_manifest(out)


def test_cohen_sample_counts_by_reason(cohen_prepared):
    summary, rows = cohen_prepared
    assert len(rows) == 124  # one manifest row per metadata row (every listed file exists)
    assert {r["source"] for r in rows} == {"cohen"} and {r["format"] for r in rows} == {"cohen"}
    assert summary.kept_total == 98
    assert summary.skipped == Counter({
        "excluded finding: todo (not yet recorded)": 5, "excluded finding: Streptococcus (bacterial)": 4,
        "excluded view: L (not frontal)": 4, "excluded modality: CT (only X-rays are kept)": 3,
        "excluded finding: Klebsiella (bacterial)": 3, "excluded finding: ARDS (no cause stated)": 2,
        "excluded finding: Lipoid (non-infectious)": 1, "excluded finding: Bacterial (bacterial)": 1,
        "excluded finding: Pneumonia (no cause stated)": 1, "excluded finding: Legionella (bacterial)": 1,
        "duplicate": 1})
    labels = Counter(r["label"] for r in kept(rows))
    assert labels == Counter({"virus": 79, "normal": 19})  # 84 viral and 20 No Finding rows, 6 of them not frontal
    assert {r["view"] for r in kept(rows)} == {"X-ray PA", "X-ray AP", "X-ray AP Supine"}
    assert all(sum(c.values()) for c in summary.counts.values())  # a test split was carved by patient


def test_cohen_image_listed_under_two_patients_is_listed_once_in_their_joined_group(cohen_prepared):
    _, rows = cohen_prepared
    listed = [r for r in rows if r["source_file"] == "000001-27.jpg"]
    assert [r["reason"] for r in listed] == [
        "excluded finding: Legionella (bacterial)",
        "duplicate: 000001-27.jpg listed twice in metadata.csv, under patients 287 and 340 (kept once; the two "
        "patients form one group)"]
    assert {r["patient_group"] for r in listed} == {"patient:287+patient:340"}
    assert groups_in_two_splits(rows) == []


# --- the Kermany folder layout, built from the CoronaHack sample's Kermany files ---------------------------------

KERMANY_NAME = re.compile(r"^(?:NORMAL2-)?IM-|^person\d+_(?:virus|bacteria)_", re.IGNORECASE)


@pytest.fixture(scope="module")
def kermany_tree(sample_dir, tmp_path_factory) -> Path:
    """chest_xray/{train,test,val}/{NORMAL,PNEUMONIA}/ with the sample's Kermany files (hard links or copies)."""
    root = tmp_path_factory.mktemp("kermany") / "chest_xray"
    image_root = sample_dir / coronahack.IMAGE_ROOT
    moved_to_val = 0
    for split in ("train", "test"):
        for path in sorted((image_root / split).iterdir()):
            if not KERMANY_NAME.match(path.name):
                continue  # the Cohen images of the CoronaHack set are not Kermany's
            folder = "NORMAL" if "IM-" in path.name.upper() and "_" not in path.name else "PNEUMONIA"
            target_split = split
            if path.name.startswith("NORMAL2-IM-14") or (folder == "PNEUMONIA" and split == "train"
                                                          and moved_to_val < 8):
                target_split, moved_to_val = "val", moved_to_val + (folder == "PNEUMONIA")
            target = root / target_split / folder / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, target)
            except OSError:
                target.write_bytes(path.read_bytes())
    (root / "train" / "NORMAL" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "train" / "PNEUMONIA" / "notes.txt").write_text("not an image")
    (root / "test" / "COVID").mkdir()
    return root.parent


def test_kermany_layout_is_detected_and_labelled_from_folders_and_names(kermany_tree, tmp_path):
    assert layouts.detect_format(kermany_tree) == "kermany"
    out = tmp_path / "out"
    summary = data.prepare(kermany_tree, out, **QUIET)
    rows = data.read_manifest(out)
    files = [p for p in (kermany_tree / "chest_xray").rglob("*") if p.is_file()]
    assert len(rows) == len(files) + 1  # + the unknown class folder
    names = Counter("virus" if "_virus_" in p.name else "bacteria" if "_bacteria_" in p.name else
                    "normal" if p.suffix == ".jpeg" else "other" for p in files)
    assert Counter(r["label"] for r in kept(rows)) == Counter(normal=names["normal"], virus=names["virus"])
    assert summary.skipped["excluded class: bacteria"] == names["bacteria"]
    by_file = {r["source_file"]: r for r in rows}
    assert by_file[".DS_Store"]["status"] == by_file["notes.txt"]["status"] == "skipped"
    assert by_file["COVID"]["reason"].startswith("unknown class folder")
    # val/ is folded into train: its images are in train or validation, never a split of their own
    val_files = [p for p in (kermany_tree / "chest_xray" / "val").rglob("*.jpeg") if "_bacteria_" not in p.name]
    val_rows = [r for r in kept(rows) if r["Dataset_type"] == "VAL"]
    assert len(val_rows) == len(val_files) > 5 and {r["split"] for r in val_rows} <= {"train", "validation"}
    assert {r["split"] for r in kept(rows) if r["Dataset_type"] == "TEST"} == {"test"}
    assert groups_in_two_splits(rows) == []


# --- several sources --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def merged(sample_dir, cohen_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("merged") / "out"
    summary = data.prepare([sample_dir, cohen_dir], out, **QUIET)
    return summary, data.read_manifest(out), out


def test_merge_finds_the_shared_images_and_keeps_them_once(merged, sample_dir, cohen_dir):
    summary, rows, _ = merged
    cohen_names = {p.name for p in (cohen_dir / "images").iterdir()}
    coronahack_names = {p.name for split in ("train", "test") for p in (sample_dir / coronahack.IMAGE_ROOT / split).iterdir()}
    shared_names = cohen_names & coronahack_names
    assert len(shared_names) == SHARED_WITH_CORONAHACK
    duplicates_found = [r for r in rows if r["duplicate_of"]]
    assert {r["source_file"] for r in duplicates_found} == shared_names
    assert all(r["source"] == "cohen" and r["duplicate_of"] == f"coronahack/{r['source_file']}"
               for r in duplicates_found)
    assert summary.shared == SHARED_WITH_CORONAHACK
    assert summary.merged == 8  # the other 3 (ARDS, Streptococcus) are excluded by their class in both sources
    for name in shared_names:  # kept at most once
        assert len([r for r in kept(rows) if r["source_file"] == name]) <= 1
    merged_with = [r for r in rows if r["merged_with"]]
    assert sum(len(r["merged_with"].split()) for r in merged_with) == SHARED_WITH_CORONAHACK
    assert groups_in_two_splits(rows) == []
    assert {r["source"] for r in rows} == {"coronahack", "cohen"}
    assert summary.kept_total == 704


@pytest.fixture(scope="module")
def external(sample_dir, cohen_dir, tmp_path_factory) -> Path:
    """CoronaHack for train/validation, Cohen held out as the test split."""
    out = tmp_path_factory.mktemp("external") / "out"
    assert cli_main(["data", "prepare", "--source", str(sample_dir), "--source", str(cohen_dir),
                     "--test-source", "cohen", "--out", str(out)]) == 0
    return out


def test_test_source_holds_a_source_out_as_the_whole_test_split(external):
    out = external
    rows = data.read_manifest(out)
    assert {r["source"] for r in kept(rows) if r["split"] == "test"} == {"cohen"}
    assert {r["source"] for r in kept(rows) if r["split"] != "test"} == {"coronahack"}
    # the held-out source's copy of a shared image is the one kept
    shared = [r for r in rows if r["duplicate_of"]]
    assert shared and all(r["source"] == "coronahack" and r["duplicate_of"].startswith("cohen/") for r in shared)
    assert groups_in_two_splits(rows) == []
    assert data.check_classes(out)


def test_reencoded_copy_in_another_source_is_found_by_perceptual_hash(kermany_tree, sample_dir, tmp_path):
    """A Cohen-layout source holding a resized, re-encoded copy of a Kermany image, and a different image."""
    picked = sorted((kermany_tree / "chest_xray" / "test" / "PNEUMONIA").glob("*_virus_*"))[:2]
    cohen = tmp_path / "cohen"
    (cohen / "images").mkdir(parents=True)
    image = Image.open(picked[0]).convert("L")
    image.thumbnail((300, 300))
    image.save(cohen / "images" / "copy.png")
    Image.open(picked[1]).convert("L").rotate(90).save(cohen / "images" / "other.jpg", quality=70)
    with (cohen / "metadata.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patientid", "finding", "view", "modality", "folder", "filename"])
        writer.writerow(["1", "Pneumonia/Viral/Influenza", "PA", "X-ray", "images", "copy.png"])
        writer.writerow(["2", "Influenza", "AP", "X-ray", "images", "other.jpg"])
    out = tmp_path / "out"
    data.prepare([kermany_tree, cohen], out, formats=["kermany", "cohen"], **QUIET)
    rows = {(r["source"], r["source_file"]): r for r in data.read_manifest(out)}
    copy = rows[("cohen", "copy.png")]
    assert copy["status"] == "skipped" and copy["duplicate_of"] == f"kermany/{picked[0].name}"
    assert re.search(r"perceptual hash \d bits apart", copy["reason"])
    assert rows[("cohen", "other.jpg")]["status"] == "kept"
    assert rows[("kermany", picked[0].name)]["merged_with"] == "cohen/copy.png"


def _kermany(root, files: dict[str, Path | bytes]) -> Path:
    """A Kermany-layout source: {"train/NORMAL/name.jpeg": source path or bytes}."""
    for relative, content in files.items():
        target = root / "chest_xray" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content if isinstance(content, bytes) else content.read_bytes())
    for split in ("train", "test"):
        for label in ("NORMAL", "PNEUMONIA"):
            (root / "chest_xray" / split / label).mkdir(parents=True, exist_ok=True)
    return root


def _sample_file(sample_dir, name: str) -> Path:
    return next((sample_dir / coronahack.IMAGE_ROOT).glob(f"*/{name}"))


def test_similar_childrens_xrays_in_two_sources_are_not_merged(sample_dir, tmp_path):
    """Four CoronaHack files also in a Kermany-layout source. The hash puts other children's X-rays of the sample
    within 2-4 bits of them (IM-0476 of IM-0286; the viral person597 of the normal IM-0304): only the four true
    copies may be dropped, and no different X-ray, nor a label conflict, may come of the closeness."""
    names = {"IM-0286-0001.jpeg": "train/NORMAL", "IM-0304-0001.jpeg": "train/NORMAL",
             "IM-0266-0001.jpeg": "train/NORMAL", "person597_virus_1150.jpeg": "train/PNEUMONIA"}
    kermany = _kermany(tmp_path / "kermany", {f"{folder}/{name}": _sample_file(sample_dir, name)
                                              for name, folder in names.items()})
    out = tmp_path / "out"
    data.prepare([sample_dir, kermany], out, **QUIET)
    rows = data.read_manifest(out)
    duplicated = {(r["source"], r["source_file"]) for r in rows if r["duplicate_of"]}
    assert duplicated == {("kermany", name) for name in names}
    assert not [r for r in rows if "conflicting" in r["reason"]]
    alone = tmp_path / "alone"
    data.prepare(sample_dir, alone, **QUIET)
    assert ({r["source_file"] for r in kept(data.read_manifest(alone))}
            == {r["source_file"] for r in kept(rows) if r["source"] == "coronahack"})


def test_one_source_holding_a_picture_under_two_names_keeps_it_once_in_test(sample_dir, tmp_path):
    original = _sample_file(sample_dir, "IM-0286-0001.jpeg")
    image = Image.open(original).convert("L")
    image.thumbnail((300, 300))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=60)
    kermany = _kermany(tmp_path / "kermany", {
        "train/NORMAL/IM-0286-0001.jpeg": original,
        "test/NORMAL/IM-0900-0001.jpeg": buffer.getvalue(),  # the same picture, re-encoded, another patient number
        "train/NORMAL/IM-0476-0001.jpeg": _sample_file(sample_dir, "IM-0476-0001.jpeg"),  # 2 bits away, different
        "train/PNEUMONIA/person597_virus_1150.jpeg": _sample_file(sample_dir, "person597_virus_1150.jpeg"),
        "test/PNEUMONIA/person1_virus_1.jpeg": _sample_file(sample_dir, "person1021_virus_1711.jpeg"),
    })
    out = tmp_path / "out"
    data.prepare(kermany, out, **QUIET)
    rows = {r["source_file"]: r for r in data.read_manifest(out)}
    copy = rows["IM-0286-0001.jpeg"]
    assert copy["status"] == "skipped" and copy["duplicate_of"] == "kermany/IM-0900-0001.jpeg"
    assert re.search(r"perceptual hash \d bits apart, thumbnails correlate (0\.9\d\d|1\.000)\)", copy["reason"])
    keeper = rows["IM-0900-0001.jpeg"]
    assert keeper["status"] == "kept" and keeper["split"] == "test"
    assert keeper["merged_with"] == "kermany/IM-0286-0001.jpeg"
    assert keeper["patient_group"] == "im0286+im0900"
    assert rows["IM-0476-0001.jpeg"]["status"] == "kept" and not rows["IM-0476-0001.jpeg"]["duplicate_of"]


def test_a_picture_held_in_train_and_test_of_one_source_is_kept_in_test_and_its_patients_leak_is_warned(
        sample_dir, tmp_path):
    """The source's TEST split stands: the test copy is kept, the patient's other train images stay in train, and
    prepare says so, as it does for a patient the source itself puts on both sides."""
    original = _sample_file(sample_dir, "person597_virus_1150.jpeg")
    image = Image.open(original).convert("L")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=70)
    kermany = _kermany(tmp_path / "kermany", {
        "train/PNEUMONIA/person900_virus_1.jpeg": original,
        "train/PNEUMONIA/person900_virus_2.jpeg": _sample_file(sample_dir, "person1021_virus_1711.jpeg"),
        "test/PNEUMONIA/person901_virus_3.jpeg": buffer.getvalue(),
        "train/NORMAL/IM-0476-0001.jpeg": _sample_file(sample_dir, "IM-0476-0001.jpeg"),
        "test/NORMAL/IM-0304-0001.jpeg": _sample_file(sample_dir, "IM-0304-0001.jpeg"),
    })
    summary = data.prepare(kermany, tmp_path / "out", **QUIET)
    rows = {r["source_file"]: r for r in data.read_manifest(tmp_path / "out")}
    assert rows["person900_virus_1.jpeg"]["duplicate_of"] == "kermany/person901_virus_3.jpeg"
    assert rows["person901_virus_3.jpeg"]["split"] == "test"
    assert rows["person900_virus_2.jpeg"]["split"] in ("train", "validation")
    assert rows["person900_virus_2.jpeg"]["patient_group"] == rows["person901_virus_3.jpeg"]["patient_group"]
    assert any("both TRAIN and TEST of the source, directly or through a picture it holds twice" in w
               and "person900+person901" in w for w in summary.warnings), summary.warnings


def test_one_source_labelling_one_picture_twice_differently_skips_both(sample_dir, tmp_path):
    picture = _sample_file(sample_dir, "IM-0286-0001.jpeg").read_bytes()
    kermany = _kermany(tmp_path / "kermany", {
        "train/NORMAL/IM-0286-0001.jpeg": picture, "train/PNEUMONIA/person2_virus_2.jpeg": picture,
        "train/NORMAL/IM-0476-0001.jpeg": _sample_file(sample_dir, "IM-0476-0001.jpeg"),
        "train/PNEUMONIA/person597_virus_1150.jpeg": _sample_file(sample_dir, "person597_virus_1150.jpeg"),
        "test/NORMAL/IM-0304-0001.jpeg": _sample_file(sample_dir, "IM-0304-0001.jpeg"),
        "test/PNEUMONIA/person1_virus_1.jpeg": _sample_file(sample_dir, "person1021_virus_1711.jpeg"),
    })
    out = tmp_path / "out"
    lines: list[str] = []
    data.prepare(kermany, out, echo=lines.append, progress=QUIET["progress"])
    rows = {r["source_file"]: r for r in data.read_manifest(out)}
    for name in ("IM-0286-0001.jpeg", "person2_virus_2.jpeg"):
        assert rows[name]["status"] == "skipped"
        assert rows[name]["reason"].startswith("duplicate with conflicting labels (kermany/")
    assert all(rows[n]["status"] == "kept" for n in ("IM-0476-0001.jpeg", "person597_virus_1150.jpeg"))
    assert any(re.fullmatch(r"\s+2\s+duplicate with conflicting labels", line) for line in lines), lines


# --- bad inputs of the new layouts ------------------------------------------------------------------------------

def _cohen_copy(cohen_dir: Path, root: Path, rows: int = 12) -> Path:
    """A small Cohen-layout folder: the sample's first `rows` metadata rows and their images (links)."""
    (root / "images").mkdir(parents=True)
    with (cohen_dir / "metadata.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        header, listed = reader.fieldnames, list(reader)[:rows]
    for row in listed:
        try:
            os.link(cohen_dir / "images" / row["filename"], root / "images" / row["filename"])
        except FileExistsError:
            pass
    with (root / "metadata.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(listed)
    return root


def test_cohen_bad_inputs_are_reported(cohen_dir, tmp_path, capsys):
    root = _cohen_copy(cohen_dir, tmp_path / "cohen", rows=40)
    text = (root / "metadata.csv").read_text()
    lines = text.splitlines()
    header = lines[0].split(",")
    row = next(csv.DictReader(io.StringIO(text)))
    odd = dict(row, finding="Martian flu", filename="martian.jpeg", patientid="900")
    bad = dict(row, finding="COVID-19", filename="notes.jpeg", patientid="901")
    unsafe = dict(row, finding="COVID-19", filename="../escape.jpeg", patientid="902")
    anonymous = dict(row, finding="COVID-19", filename="anonymous.jpeg", patientid="")
    (root / "images" / "anonymous.jpeg").write_bytes((root / "images" / row["filename"]).read_bytes())
    (root / "images" / "martian.jpeg").write_bytes((root / "images" / row["filename"]).read_bytes())
    (root / "images" / "notes.jpeg").write_text("not an image")
    (root / "images" / "unlisted.png").write_bytes(b"\x89PNG")
    with (root / "metadata.csv").open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[h for h in header])
        for extra in (odd, bad, unsafe, anonymous):
            writer.writerow({k: extra.get(k, "") for k in header})
    out = tmp_path / "out"
    summary = data.prepare(root, out, **QUIET)
    rows = {r["source_file"]: r for r in data.read_manifest(out)}
    assert summary.skipped["unknown finding: Martian flu"] == 1
    assert rows["notes.jpeg"]["status"] == "skipped" and rows["notes.jpeg"]["reason"]
    assert rows["../escape.jpeg"]["reason"].startswith("unsafe file name")
    assert rows["unlisted.png"]["reason"] == "not listed in metadata.csv"
    # no patient id: skipped and counted, not given a group of its own (it could share a patient with another split)
    assert rows["anonymous.jpeg"]["status"] == "skipped" and "empty patientid" in rows["anonymous.jpeg"]["reason"]
    # a missing column is one line with what to do
    (root / "metadata.csv").write_text("\n".join([lines[0].replace("finding", "diagnosis"), *lines[1:]]) + "\n")
    assert cli_main(["data", "prepare", "--source", str(root), "--out", str(tmp_path / "o2")]) == 2
    message = capsys.readouterr().err
    assert "missing column(s) finding" in message and "To fix" in message and "Traceback" not in message


def test_unknown_layout_format_and_test_source_fail_with_one_line(cohen_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for argv, expected in [
        (["--source", str(tmp_path / "empty")], "not a known layout"),
        (["--source", str(cohen_dir), "--test-source", "cohen"], "is not one of several sources"),
        (["--source", str(cohen_dir), "--source", str(cohen_dir), "--format", "cohen", "--format", "cohen",
          "--format", "cohen"], "3 --format value(s)"),
    ]:
        assert cli_main(["data", "prepare", *argv, "--out", str(tmp_path / "o")]) == 2
        message = capsys.readouterr().err
        assert expected in message and "To fix" in message and "Traceback" not in message
    specs = layouts.resolve_sources([cohen_dir, cohen_dir])
    assert [s.name for s in specs] == [cohen_dir.name, f"{cohen_dir.name}-2"]


# --- evaluation per source and the source shortcut check --------------------------------------------------------

def test_source_shortcut_measures_separation_within_a_class():
    import numpy as np

    from hfxray.evaluation import SHORTCUT_WARNING, shortcut_message, source_shortcut

    labels = np.array([0] * 20 + [1] * 20)
    sources = np.array((["a"] * 10 + ["b"] * 10) * 2)
    probs = np.where(sources == "b", 0.9, 0.1) + np.linspace(0, 0.05, 40)  # the output follows the source
    check = source_shortcut(probs, labels, sources, "test split")
    assert [row["class"] for row in check["by_class"]] == ["normal", "virus"]
    assert check["max_separation"] == 1.0 and check["warning"]
    assert shortcut_message(check).startswith("WARNING") and str(SHORTCUT_WARNING) in shortcut_message(check)
    reversed_check = source_shortcut(1 - probs, labels, sources, "test split")  # read both ways
    assert reversed_check["max_separation"] == 1.0 and reversed_check["by_class"][0]["auroc"] == 0.0
    rng = np.random.default_rng(0)
    fair = source_shortcut(rng.random(40), labels, sources, "test split")
    assert fair["max_separation"] < SHORTCUT_WARNING and not fair["warning"]
    lone = source_shortcut(probs, labels, np.array(["a"] * 40), "test split")
    assert lone["max_separation"] is None and "not measured" in shortcut_message(lone)


def test_evaluation_report_and_card_break_metrics_down_by_source(merged, external, tmp_path):
    """An untrained tiny model is enough to check the wiring: per-source metrics, sources, shortcut check."""
    import json

    import torch

    from hfxray.evaluation import report_split
    from hfxray.hub import _per_source_card
    from hfxray.report import Run, external_validation_section

    torch.manual_seed(0)
    from hfxray.models import create_model

    model, processor, _ = create_model("vit", "tiny", image_size=32, resize_size=36)
    _, _, merged_dir = merged
    report = report_split(model, processor, merged_dir, "test", n_resamples=50)
    assert set(report["by_source"]) == {"coronahack", "cohen"}
    assert sum(r["n"] for r in report["by_source"].values()) == report["n"]
    assert all(r["bootstrap_unit"] == "patient" and "auroc" in r["ci95"] for r in report["by_source"].values())
    assert report["source_shortcut"]["images"] == "test split"
    # one source per split: the shortcut check compares the held-out validation (CoronaHack) and test (Cohen)
    out = tmp_path / "run" / "test_results.json"
    held_out = report_split(model, processor, external, "test", out=out, n_resamples=50, prefix="test")
    assert set(held_out["by_source"]) == {"cohen"}
    # 513, not 515: CoronaHack's copies of Cohen patients 10 (SARS, day 27) and 19 (gr2_lrg-d) share a patient with
    # the held-out Cohen test images, now that they are grouped by Cohen patient (hfxray.data.cohen_groups)
    assert held_out["sources"]["train"] == {"coronahack": 513} and set(held_out["sources"]["test"]) == {"cohen"}
    check = held_out["source_shortcut"]
    assert check["images"] == "held-out validation and test splits"
    assert {tuple(row["sources"]) for row in check["by_class"]} == {("cohen", "coronahack")}
    results = json.loads(out.read_text())
    card = "\n".join(_per_source_card(results))
    assert "Trained on coronahack (513); tested on cohen (98)." in card and "source shortcut check" in card
    section = external_validation_section([Run("vit / scratch", out.parent, {}, results, {})])
    assert "| vit / scratch | coronahack (513) | coronahack (91) | cohen (98) |" in section


def test_shortcut_check_has_an_interval_and_a_permutation_p():
    """A middling separation on few images is not called safe: its interval and p-value are stated."""
    import numpy as np

    from hfxray.evaluation import SHORTCUT_WARNING, shortcut_message, source_shortcut

    rng = np.random.default_rng(5)
    labels = np.zeros(64, int)
    sources = np.array(["cohen"] * 19 + ["coronahack"] * 45)
    probs = np.r_[rng.normal(0.6, 0.2, 19), rng.normal(0.45, 0.2, 45)]
    check = source_shortcut(probs, labels, sources, "held-out splits")
    row = check["by_class"][0]
    low, high = row["separation_ci95"]
    assert 0.5 <= low <= row["separation"] <= high <= 1 and high - low > 0.1
    assert 0 < row["permutation_p"] < 0.1
    message = shortcut_message(check)
    assert f"95% CI {low:.2f}-{high:.2f}, permutation p" in message
    if not check["warning"] and high >= SHORTCUT_WARNING:
        assert "not ruled out" in message
    same = source_shortcut(rng.random(64), labels, sources, "held-out splits")["by_class"][0]
    assert same["permutation_p"] > 0.05 and same["separation_ci95"][0] == 0.5


def test_shortcut_aurocs_match_sklearn_with_ties():
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from hfxray.evaluation import _aurocs

    rng = np.random.default_rng(2)
    scores = np.round(rng.random((3, 30)), 1)  # ties
    second = np.arange(30) % 3 == 0
    assert _aurocs(scores, second) == pytest.approx([roc_auc_score(second, row) for row in scores])


def test_shortcut_check_resamples_patients_not_images(monkeypatch):
    """Several images of one patient are not independent evidence of a source: with patient groups the interval
    widens and the permutation p-value is near uniform under the null, where image-level resampling is not."""
    import numpy as np

    import hfxray.evaluation as evaluation

    monkeypatch.setattr(evaluation, "SHORTCUT_RESAMPLES", 300)
    rng = np.random.default_rng(11)
    sources = np.repeat(["a", "b"], 40)  # 10 patients of 4 images in each source
    groups = np.array([f"{s}:{i // 4}" for i, s in enumerate(sources)])
    labels = np.zeros(80, int)

    def clustered(shift=0.0):  # a patient's images look alike: a large patient effect, a small image one
        return (np.repeat(rng.normal(0, 1, 20), 4) + rng.normal(0, 0.2, 80) + shift * (sources == "b"))

    def p_value(scores, by_patient):
        check = evaluation.source_shortcut(scores, labels, sources, "held-out splits",
                                           groups=groups if by_patient else None)
        return check["by_class"][0]

    separable = p_value(clustered(shift=4.0), True)
    assert separable["permutation_p"] < 0.01 and separable["resampled"] == "patients"
    assert separable["separation_ci95"][0] > 0.8
    null_grouped, null_images = [], []
    for _ in range(40):
        scores = clustered()
        grouped, images = p_value(scores, True), p_value(scores, False)
        assert images["resampled"] == "images"
        # the patient bootstrap is wider than the image one on the same scores
        assert np.diff(grouped["separation_ci95"])[0] >= np.diff(images["separation_ci95"])[0] - 0.02
        null_grouped.append(grouped["permutation_p"])
        null_images.append(images["permutation_p"])
    null_grouped, null_images = np.array(null_grouped), np.array(null_images)
    assert 0.3 < null_grouped.mean() < 0.7 and (null_grouped < 0.05).mean() <= 0.15
    assert (null_images < 0.05).mean() > (null_grouped < 0.05).mean() + 0.1  # image level: falsely small p-values
