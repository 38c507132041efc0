"""`pipeline` round trip for all three model kinds, temperature folding, and `hfxray predict` on awkward files.

Models are the registry's tiny presets saved with `save_pretrained`, so nothing needs the Hub or a training run.
"""

from __future__ import annotations

import csv
import json
import os
import shutil

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch
from PIL import Image

from hfxray.cli import main
from hfxray.calibration import fold_temperature

KINDS = ("vit", "bit", "hybrid")


@pytest.fixture(scope="module")
def model_dirs(tiny_models) -> dict:
    """kind -> folder holding a tiny random model and its processor, as `hfxray train` writes them."""
    return {kind: tiny_models / kind for kind in KINDS}


def xray_like(seed: int = 0, size=(90, 70)) -> Image.Image:
    """A non-square grayscale image, so that resize and center-crop both do something."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0]), dtype=np.uint8)
    return Image.fromarray(pixels, mode="L").convert("RGB")


def own_softmax(folder, image: Image.Image, temperature: float = 1.0) -> np.ndarray:
    """processor(image) -> model -> softmax(logits / T), without the pipeline."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    processor = AutoImageProcessor.from_pretrained(folder)
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        logits = model(**processor(images=image, return_tensors="pt")).logits[0]
    return torch.softmax(logits / temperature, dim=-1).numpy()


@pytest.mark.parametrize("kind", KINDS)
def test_pipeline_scores_equal_the_models_own_softmax(model_dirs, kind):
    from transformers import pipeline

    image = xray_like()
    scores = pipeline("image-classification", model=str(model_dirs[kind]))(image, top_k=2)
    assert {entry["label"] for entry in scores} == {"normal", "virus"}
    expected = own_softmax(model_dirs[kind], image)
    got = {entry["label"]: entry["score"] for entry in scores}
    np.testing.assert_allclose([got["normal"], got["virus"]], expected, atol=1e-5)


def test_a_folded_and_saved_model_is_calibrated_in_plain_pipeline(model_dirs, tmp_path):
    """What an evaluation step can publish: T in the weights, so Hub users need no hfxray code."""
    from transformers import AutoModelForImageClassification, pipeline

    model = AutoModelForImageClassification.from_pretrained(model_dirs["bit"])
    fold_temperature(model, 3.0)
    folder = tmp_path / "folded"
    model.save_pretrained(folder)
    shutil.copy(model_dirs["bit"] / "preprocessor_config.json", folder)

    scores = pipeline("image-classification", model=str(folder))(xray_like(seed=2), top_k=2)
    got = {entry["label"]: entry["score"] for entry in scores}
    expected = own_softmax(model_dirs["bit"], xray_like(seed=2), temperature=3.0)
    np.testing.assert_allclose([got["normal"], got["virus"]], expected, atol=1e-5)
    assert json.loads((folder / "config.json").read_text())["folded_temperature"] == 3.0


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_predict_folder_reports_unreadable_files_and_goes_on(model_dirs, sample_dir, tmp_path, capsys, suffix):
    source = sample_dir / "Coronahack-Chest-XRay-Dataset" / "Coronahack-Chest-XRay-Dataset" / "test"
    good = sorted(source.glob("*.jpeg"))[:3]
    if len(good) < 3:
        pytest.skip(f"fewer than 3 test X-rays in {source}")
    folder = tmp_path / "inbox"
    (folder / "nested").mkdir(parents=True)
    for i, path in enumerate(good):
        shutil.copy(path, (folder / "nested" if i == 0 else folder) / path.name)
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG" * 10)
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image extension: ignored")
    out = tmp_path / f"preds{suffix}"

    code = main(["predict", "--model", str(model_dirs["bit"]), str(folder), "--out", str(out), "--batch-size", "2"])

    assert code == 0
    if suffix == ".csv":
        with out.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    else:
        rows = json.loads(out.read_text())
    by_name = {os.path.basename(row["file"]): row for row in rows}
    assert set(by_name) == {p.name for p in good} | {"corrupt.jpg", "empty.png"}
    assert by_name["empty.png"]["error"] == "zero-byte file"
    assert "corrupt" in by_name["corrupt.jpg"]["error"] or "not an image" in by_name["corrupt.jpg"]["error"]
    for path in good:
        row = by_name[path.name]
        assert row["error"] == "" and row["label"] in ("normal", "virus")
        p_virus, probability = float(row["p_virus"]), float(row["probability"])
        assert probability == pytest.approx(p_virus if row["label"] == "virus" else 1 - p_virus, abs=1e-6)
    summary = capsys.readouterr().err
    assert "predicted 3 of 5 files; 2 unreadable" in summary and "zero-byte file" in summary


def test_predict_exits_1_when_nothing_is_readable(model_dirs, tmp_path, capsys):
    empty = tmp_path / "empty.jpeg"
    empty.write_bytes(b"")
    assert main(["predict", "--model", str(model_dirs["vit"]), str(empty)]) == 1
    captured = capsys.readouterr()
    assert "zero-byte file" in captured.out and "predicted 0 of 1 files" in captured.err


def test_predict_model_and_output_errors_are_clear(model_dirs, tmp_path, capsys):
    image_path = tmp_path / "xray.png"
    xray_like().save(image_path)
    assert main(["predict", "--model", str(tmp_path / "missing_run"), str(image_path)]) == 2
    assert "no such folder. To fix" in capsys.readouterr().err
    assert main(["predict", "--model", str(model_dirs["vit"]), str(image_path), "--out", "preds.txt"]) == 2
    assert "To fix: end the name with .csv or .json" in capsys.readouterr().err


@pytest.mark.parametrize("labels", [{"0": "virus", "1": "normal"}, {"0": "cat", "1": "dog"},
                                    {"0": "normal", "1": "virus", "2": "bacteria"}])
@pytest.mark.parametrize("command", ["predict", "evaluate", "explain"])
def test_a_model_labelled_otherwise_is_refused_not_scored(command, labels, tiny_models, prepared_dir, tmp_path,
                                                          capsys):
    import json
    import shutil

    from hfxray.cli import main as cli_main

    model = tmp_path / "relabelled"
    shutil.copytree(tiny_models / "vit", model)
    config = json.loads((model / "config.json").read_text())
    config["id2label"], config["label2id"] = labels, {v: int(k) for k, v in labels.items()}
    (model / "config.json").write_text(json.dumps(config))
    image = next((prepared_dir / "test" / "virus").iterdir())
    argv = {"predict": ["predict", "--model", str(model), str(image)],
            "evaluate": ["evaluate", "--model", str(model), "--data-dir", str(prepared_dir), "--out",
                         str(tmp_path / "e.json")],
            "explain": ["explain", "--model", str(model), "--method", "rollout", "--out", str(tmp_path / "m"),
                        str(image)]}[command]
    code = cli_main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "labelled" in err and "To fix" in err, err
    assert not (tmp_path / "e.json").exists()


@pytest.mark.parametrize("device, says", [("banana", "not a device torch knows"), ("cuda:7", "GPU(s) here")])
def test_a_bad_device_is_named_not_blamed_on_the_model(device, says, tiny_models, prepared_dir, capsys):
    import torch

    from hfxray.cli import main as cli_main

    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a GPU 7")
    image = next((prepared_dir / "test" / "virus").iterdir())
    assert cli_main(["predict", "--model", str(tiny_models / "vit"), str(image), "--device", device]) == 2
    err = capsys.readouterr().err
    assert f"--device {device}" in err and says in err


def test_other_modalities_are_answered_and_flagged_in_predict_and_explain(model_dirs, tmp_path, capsys):
    """Real DICOM files of other modalities (pydicom's CT and MR test files, the NEMA WG04 chest CR relabelled a
    mammogram): answered, with the reason in the warning column and in explain's table; a colour ultrasound and an
    MR volume, which are not one grayscale image, are refused in one line and counted."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    from hfxray.explain import explain_images

    names = ("CT_small.dcm", "MR_small.dcm", "RG1_UNCR.dcm", "US1_UNCR.dcm", "emri_small.dcm")
    found = {name: get_testdata_file(name) for name in names}
    if None in found.values():
        pytest.skip("pydicom-data is not installed (pip install pydicom-data, in the [dev] extra)")
    folder = tmp_path / "inbox"
    folder.mkdir()
    for name, path in found.items():
        shutil.copy(path, folder / name)
    mammogram = pydicom.dcmread(found["RG1_UNCR.dcm"])
    mammogram.Modality = "MG"
    mammogram.save_as(folder / "RG1_as_MG.dcm")
    out = tmp_path / "preds.csv"
    assert main(["predict", "--model", str(model_dirs["bit"]), str(folder), "--out", str(out)]) == 0
    with out.open(newline="") as handle:
        rows = {row["file"].rsplit("/", 1)[-1]: row for row in csv.DictReader(handle)}
    expected = {"CT_small.dcm": "modality CT, not CR/DX (plain radiography): a CT slice is a cross-section",
                "MR_small.dcm": "modality MR, not CR/DX (plain radiography): an MR image is not an X-ray",
                "RG1_as_MG.dcm": "modality MG, not CR/DX (plain radiography): a mammogram"}
    for name, reason in expected.items():
        row = rows[name]
        assert row["error"] == "" and row["label"] in ("normal", "virus"), row
        assert row["warning"].startswith(f"out of scope: the DICOM header says {reason}"), row["warning"]
    assert rows["RG1_UNCR.dcm"]["error"] == "" and "modality" not in rows["RG1_UNCR.dcm"]["warning"]
    assert rows["US1_UNCR.dcm"]["error"].startswith("colour DICOM (RGB") and rows["US1_UNCR.dcm"]["label"] == ""
    assert rows["emri_small.dcm"]["error"].startswith("multi-frame DICOM (10 frames)")
    summary = capsys.readouterr().err
    assert "predicted 4 of 6 files; 2 unreadable" in summary
    assert "3 out of scope (see the warning column)" in summary and "CT_small.dcm" in summary

    explained = explain_images(model_dirs["bit"], "gradcam", [folder / "CT_small.dcm"], tmp_path / "maps")
    (row,) = explained.rows
    assert "modality CT, not CR/DX (plain radiography)" in row["warning"], row


def test_a_square_resize_run_predicts_in_pipeline_and_predict_what_evaluate_computed(square_run, prepared_dir,
                                                                                    tmp_path):
    """`--resize_mode square`: the saved processor squashes every image to 72 x 72 as training and evaluation did,
    so plain `pipeline` and `hfxray predict` give evaluate's probabilities; a shortest-edge processor would not."""
    from transformers import pipeline

    from hfxray.evaluation import predictions_path, read_predictions_csv
    from hfxray.models import build_processor

    saved = json.loads((square_run / "preprocessor_config.json").read_text())
    assert saved["size"] == {"height": 72, "width": 72} and saved["crop_size"] == {"height": 64, "width": 64}
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(square_run), "--data-dir", str(prepared_dir), "--out", str(out),
                 "--n-resamples", "20"]) == 0
    evaluated = read_predictions_csv(predictions_path(out))
    files = sorted(evaluated)[:3] + sorted(evaluated)[-3:]  # normal and virus X-rays, none of them square
    images = [Image.open(prepared_dir / name) for name in files]
    assert all(image.width != image.height for image in images)
    classifier = pipeline("image-classification", model=str(square_run), device="cpu")
    piped = [{e["label"]: e["score"] for e in classifier(image, top_k=2)}["virus"] for image in images]
    np.testing.assert_allclose(piped, [evaluated[name][2] for name in files], atol=1e-4)
    listed = tmp_path / "inbox"
    listed.mkdir()
    for name in files:
        shutil.copy(prepared_dir / name, listed / name.replace("/", "_"))
    assert main(["predict", "--model", str(square_run), str(listed), "--out", str(tmp_path / "p.csv")]) == 0
    with (tmp_path / "p.csv").open(newline="") as handle:
        predicted = {os.path.basename(row["file"]): float(row["p_virus"]) for row in csv.DictReader(handle)}
    np.testing.assert_allclose([predicted[name.replace("/", "_")] for name in files], piped, atol=1e-5)
    classifier.image_processor = build_processor(64, 72)  # the same model shown shortest-edge crops
    other = [{e["label"]: e["score"] for e in classifier(image, top_k=2)}["virus"] for image in images]
    assert np.abs(np.subtract(other, piped)).max() > 1e-3
