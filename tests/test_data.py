"""Data preparation: labels, patient-level splits, every bad-input case (files generated here), the real sample."""

from __future__ import annotations

import csv
import struct
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hfxray import data
from hfxray.data import coronahack, kermany, preparation
from hfxray.cli import main as cli_main

HEADER = ["", "X_ray_image_name", "Label", "Dataset_type", "Label_2_Virus_category", "Label_1_Virus_category"]
QUIET = dict(echo=lambda *_: None, progress=lambda items, **_: items)


def _gray(size=(120, 100), seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, size[::-1], dtype=np.uint8), mode="L")


def _bomb_png(path: Path, width: int = 100_000, height: int = 100_000) -> None:
    """A 1x1 PNG whose header claims width x height pixels (a decompression bomb to PIL)."""
    raw = bytearray(Path(_save(_gray((1, 1)), path)).read_bytes())
    ihdr = struct.pack(">II", width, height) + bytes(raw[24:29])
    raw[16:29] = ihdr
    raw[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    path.write_bytes(bytes(raw))


def _save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


class KaggleSource:
    """A tiny Kaggle-layout folder built file by file."""

    def __init__(self, root: Path):
        self.root = root
        self.rows: list[list[str]] = []
        for split in ("train", "test"):
            (root / coronahack.IMAGE_ROOT / split).mkdir(parents=True, exist_ok=True)

    def path(self, name: str, split: str = "TRAIN") -> Path:
        return self.root / coronahack.IMAGE_ROOT / split.lower() / name

    def add(self, name, label="Normal", label_1="", label_2="", split="TRAIN", image=None, write=True, **save):
        self.rows.append([str(len(self.rows)), name, label, split, label_2, label_1])
        if write:
            _save(image if image is not None else _gray(seed=len(self.rows)), self.path(name, split), **save)
        return self.path(name, split)

    def add_good(self, count: int = 4):
        for i in range(count):
            self.add(f"IM-{i:04d}-0001.jpeg", format="JPEG")
            self.add(f"person{i}_virus_{i}.jpeg", "Pnemonia", "Virus", format="JPEG")
            self.add(f"IM-{100 + i:04d}-0001.jpeg", split="TEST", format="JPEG")
            self.add(f"person{100 + i}_virus_{i}.jpeg", "Pnemonia", "Virus", split="TEST", format="JPEG")

    def write_csv(self, header=HEADER):
        with (self.root / coronahack.CSV_NAME).open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(self.rows)
        return self.root


def _manifest_by_source(out: Path) -> dict[str, dict]:
    return {row["source_file"]: row for row in data.read_manifest(out)}


@pytest.fixture
def source(tmp_path) -> KaggleSource:
    return KaggleSource(tmp_path / "kaggle")


def test_patient_groups_from_kermany_names():
    assert kermany.patient_group("person123_virus_45.jpeg") == "person123"
    assert kermany.patient_group("person123_bacteria_7.jpeg") == "person123"
    assert kermany.patient_group("IM-0115-0001.jpeg") == kermany.patient_group("NORMAL2-IM-0115-0001.jpeg") == "im0115"
    assert kermany.patient_group("IM-0011-0001-0001.jpeg") == "im0011"
    assert kermany.patient_group("31BA3780-2323.jpeg") == "file:31BA3780-2323.jpeg"


@pytest.mark.parametrize("label,label_1,expected", [
    ("Normal", "", "normal"), ("Pnemonia", "Virus", "virus"), ("Pneumonia", "virus", "virus"),
    ("Pnemonia", "bacteria", None), ("Pnemonia", "Stress-Smoking", None), ("Pnemonia", "", None),
    ("Healthy", "", None), ("Pnemonia", "Fungus", None), ("Normal", "Virus", None),
])
def test_binary_label_mapping(label, label_1, expected):
    assert coronahack.binary_label(label, label_1)[0] == expected


def test_every_bad_input_is_reported_counted_and_the_rest_kept(source, tmp_path):
    source.add_good()
    source.add("missing-file.jpeg", write=False)
    source.path("zero.jpeg").write_bytes(b"")
    source.add("zero.jpeg", write=False)
    truncated = source.add("truncated.jpeg", format="JPEG", image=_gray((300, 300), seed=9))
    truncated.write_bytes(truncated.read_bytes()[:2000])
    source.path("random-bytes.jpeg").write_bytes(np.random.default_rng(1).bytes(5000))
    source.add("random-bytes.jpeg", write=False)
    source.path("notes.png").write_text("this is a text file with an image name\n")
    source.add("notes.png", write=False)
    _bomb_png(source.path("bomb.png"))
    source.add("bomb.png", write=False)
    source.add("tiny.jpeg", image=_gray((32, 32)), format="JPEG")
    source.add("small-but-usable.jpeg", image=_gray((100, 90)), format="JPEG")
    source.add("IM-0000-0001.jpeg", write=False)  # the same file name listed twice
    source.add("strange.jpeg", "Healthy", format="JPEG")
    source.add("person7_bacteria_1.jpeg", "Pnemonia", "bacteria", format="JPEG")
    source.add("ards.jpeg", "Pnemonia", "Stress-Smoking", "ARDS", format="JPEG")
    _save(_gray((50, 50)), source.path("not-in-csv.jpeg"), format="JPEG")
    out = tmp_path / "out"
    summary = data.prepare(source.write_csv(), out, **QUIET)

    rows = _manifest_by_source(out)
    reasons = {name: rows[name]["reason"] for name in rows}
    assert reasons["missing-file.jpeg"] == "file not found"
    assert reasons["zero.jpeg"] == "zero-byte file"
    assert reasons["truncated.jpeg"].startswith("corrupt or truncated image")
    assert reasons["random-bytes.jpeg"].startswith("not an image")
    assert reasons["notes.png"].startswith("not an image")
    assert reasons["bomb.png"].startswith("decompression bomb")
    assert reasons["tiny.jpeg"].startswith("too small")
    assert reasons["strange.jpeg"].startswith("unknown Label")
    assert reasons["person7_bacteria_1.jpeg"] == "excluded class: bacteria"
    assert reasons["ards.jpeg"] == "excluded class: stress-smoking"
    assert reasons["not-in-csv.jpeg"] == "not listed in the CSV"
    assert rows["small-but-usable.jpeg"]["status"] == "kept"
    assert any("smaller than a 224 px crop" in w for w in summary.warnings)
    duplicates = [r for r in data.read_manifest(out) if r["source_file"] == "IM-0000-0001.jpeg"]
    assert [r["status"] for r in duplicates] == ["kept", "skipped"]
    assert duplicates[1]["reason"].startswith("duplicate")

    assert summary.kept_total == 17  # 16 good + small-but-usable
    assert sum(summary.skipped.values()) == len(data.read_manifest(out)) - 17
    assert summary.skipped["excluded class: bacteria"] == 1


def test_exotic_modes_are_converted_not_skipped(source, tmp_path):
    source.add_good()
    rgba = Image.new("RGBA", (80, 80), (200, 100, 50, 255))
    rgba.putpixel((0, 0), (255, 255, 255, 0))  # a transparent pixel must become black, not white
    source.add("rgba.png", image=rgba, format="PNG")
    gradient = np.tile(np.linspace(0, 4095, 80), (80, 1)).astype(np.uint16)  # 12-bit data in a 16-bit file
    source.add("sixteen.png", image=Image.fromarray(gradient).convert("I;16"), format="PNG")
    black_ink = np.tile(np.arange(80, dtype=np.uint8) * 3, (80, 1))  # a grey ramp printed in K
    cmyk = Image.fromarray(np.dstack([np.zeros((80, 80), np.uint8)] * 3 + [black_ink]), "CMYK")
    source.add("cmyk.jpeg", image=cmyk, format="JPEG")
    source.add("palette.png", image=_gray((80, 80)).convert("P"), format="PNG")
    out = tmp_path / "out"
    data.prepare(source.write_csv(), out, **QUIET)
    rows = _manifest_by_source(out)
    for name in ("rgba.png", "sixteen.png", "cmyk.jpeg", "palette.png"):
        assert rows[name]["status"] == "kept", rows[name]
        assert rows[name]["action"].startswith("converted"), rows[name]
        converted = Image.open(out / rows[name]["file"])
        assert converted.mode in ("L", "RGB")
    sixteen = np.asarray(Image.open(out / rows["sixteen.png"]["file"]))
    assert sixteen.min() == 0 and sixteen.max() == 255 and np.all(np.diff(sixteen[0].astype(int)) >= 0)
    rgba_out = Image.open(out / rows["rgba.png"]["file"])
    assert rgba_out.getpixel((0, 0)) == (0, 0, 0) and rgba_out.getpixel((5, 5)) == (200, 100, 50)


def test_missing_csv_and_missing_columns_fail_with_a_clear_message(source, tmp_path, capsys):
    assert cli_main(["data", "prepare", "--source", str(source.root), "--out", str(tmp_path / "o")]) == 2
    message = capsys.readouterr().err
    assert coronahack.CSV_NAME in message and "To fix" in message and "Traceback" not in message
    source.add_good()
    source.write_csv(header=["", "X_ray_image_name", "Label", "Dataset_type"])
    with pytest.raises(data.DataError, match="missing column.*Label_1_Virus_category"):
        data.prepare(source.root, tmp_path / "o", **QUIET)


def test_nothing_usable_is_an_error(source, tmp_path):
    source.add("person1_bacteria_1.jpeg", "Pnemonia", "bacteria", format="JPEG")
    source.add("gone.jpeg", write=False)
    with pytest.raises(data.DataError, match="no usable"):
        data.prepare(source.write_csv(), tmp_path / "o", **QUIET)
    assert not (tmp_path / "o").exists()


def test_rerun_is_idempotent_and_an_interrupted_run_leaves_the_old_output(source, tmp_path, monkeypatch):
    source.add_good(6)
    out = tmp_path / "out"
    data.prepare(source.write_csv(), out, **QUIET)
    first = (out / data.MANIFEST_NAME).read_text()
    data.prepare(source.root, out, **QUIET)
    assert (out / data.MANIFEST_NAME).read_text() == first

    calls = Counter()

    def crash_midway(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    original = preparation._materialise
    monkeypatch.setattr(preparation, "_materialise", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        data.prepare(source.root, out, **QUIET)
    assert (out / data.MANIFEST_NAME).read_text() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kaggle", "out"]  # no partial folder left behind


def test_refuses_to_replace_a_foreign_folder(source, tmp_path):
    source.add_good()
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.txt").write_text("do not delete")
    with pytest.raises(data.DataError, match="refusing"):
        data.prepare(source.write_csv(), out, **QUIET)
    assert (out / "thesis.txt").exists()


def test_validation_split_keeps_patients_together_and_is_deterministic(source, tmp_path):
    for patient in range(30):
        for image in range(3):  # three X-rays per virus patient
            source.add(f"person{patient}_virus_{image}.jpeg", "Pnemonia", "Virus", format="JPEG")
        source.add(f"IM-{patient:04d}-0001.jpeg", format="JPEG")
        source.add(f"NORMAL2-IM-{patient:04d}-0001.jpeg", format="JPEG")  # same patient number: one group
    source.add("person999_virus_1.jpeg", "Pnemonia", "Virus", split="TEST", format="JPEG")
    source.add("IM-0999-0001.jpeg", split="TEST", format="JPEG")
    source.write_csv()
    manifests = []
    for run in range(2):
        out = tmp_path / f"out{run}"
        data.prepare(source.root, out, val_fraction=0.2, seed=7, **QUIET)
        manifests.append((out / data.MANIFEST_NAME).read_text())
    assert manifests[0] == manifests[1]
    rows = [r for r in data.read_manifest(tmp_path / "out0") if r["status"] == "kept"]
    splits_per_group = {}
    for row in rows:
        splits_per_group.setdefault(row["patient_group"], set()).add(row["split"])
    assert all(len(s) == 1 for s in splits_per_group.values())
    validation = Counter(r["label"] for r in rows if r["split"] == "validation")
    assert 15 <= validation["virus"] <= 21 and 10 <= validation["normal"] <= 14  # ~20 % of 90 and of 60
    other_seed = tmp_path / "other"
    data.prepare(source.root, other_seed, val_fraction=0.2, seed=8, **QUIET)
    assert (other_seed / data.MANIFEST_NAME).read_text() != manifests[0]


def test_patient_in_train_and_test_is_warned(source, tmp_path):
    source.add_good()
    source.add("person0_virus_99.jpeg", "Pnemonia", "Virus", split="TEST", format="JPEG")
    summary = data.prepare(source.write_csv(), tmp_path / "out", **QUIET)
    assert any("both TRAIN and TEST" in w and "person0" in w for w in summary.warnings)


def test_real_sample_counts_splits_and_imagefolder(prepared_dir):
    rows = data.read_manifest(prepared_dir)
    kept = [r for r in rows if r["status"] == "kept"]
    assert Counter(r["label"] for r in kept) == {"normal": 300, "virus": 314}
    skipped = Counter(r["reason"] for r in rows if r["status"] == "skipped")
    assert skipped == {"excluded class: bacteria": 105, "excluded class: stress-smoking": 2}
    groups = {}
    for row in kept:
        groups.setdefault(row["patient_group"], set()).add(row["split"])
    assert all(len(s) == 1 for s in groups.values()), "a patient appears in two splits"
    assert Counter(r["split"] for r in kept)["test"] == 92  # TEST stays TEST
    dataset = data.load_imagefolder(prepared_dir)
    assert dataset["train"].features["label"].names == ["normal", "virus"]
    assert sum(len(dataset[s]) for s in ("train", "validation", "test")) == 614
    assert len(dataset["validation"]) > 0


def test_check_prepared_names_the_fix(tmp_path):
    with pytest.raises(data.DataError, match="hfxray data prepare"):
        data.check_prepared(tmp_path)


def test_reading_a_prepared_folder_never_says_downloading(prepared_dir, capfd, tmp_path, monkeypatch):
    """datasets labels its bar for listing local files "Downloading data"; hfxray says what it does instead."""
    from hfxray import logs

    import datasets

    # A cold cache, so that the listing really runs (the variable is read when datasets is imported).
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    logs.configure(quiet=False)
    capfd.readouterr()
    dataset = data.load_imagefolder(prepared_dir)
    err = capfd.readouterr().err
    assert "ownload" not in err
    assert f"Reading the prepared images in {prepared_dir} (train {dataset['train'].num_rows}, " in err
