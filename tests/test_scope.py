"""Out-of-scope inputs are said to be so: DICOM header flags, and the out-of-distribution check fitted at the end of
training, on real files (the NEMA WG04 set of pydicom-data) and tiny models trained on the real sample."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from hfxray.scope import FLAGGED, IN_RANGE, NOT_CHECKED, OOD_JSON, OOD_TENSORS, OodCheck, capture_features, \
    fit_ood, stacked  # noqa: E402

WG04_CHEST = ("RG1_UNCR", "RG1_J2KR", "RG1_UNCI", "RG1_J2KI")  # CR chest PA, MONOCHROME1, 15-bit
WG04_LIMB = ("RG3_UNCR", "RG3_J2KR")  # CR of a tibia: BodyPartExamined EXTREMITY


@pytest.fixture(scope="module")
def wg04() -> dict[str, Path]:
    """NEMA WG04 radiographs from the pydicom-data package, through pydicom's data manager."""
    from pydicom.data import get_testdata_file

    found = {}
    for name in WG04_CHEST + WG04_LIMB:
        path = get_testdata_file(f"{name}.dcm")
        if path is None:
            pytest.skip("the NEMA WG04 files are not installed (pip install pydicom-data, in the [dev] extra)")
        found[name] = Path(path)
    return found


def _dicom(tmp_path: Path, **elements) -> Path:
    from test_dicom import make_dicom

    pixels = np.tile(np.arange(64, dtype=np.uint16) * 60, (64, 1))
    return make_dicom(tmp_path / "x.dcm", pixels, modality="CR", **elements)


@pytest.mark.parametrize("elements, expected", [
    ({}, ""),
    ({"BodyPartExamined": "CHEST", "ViewPosition": "PA"}, ""),
    ({"BodyPartExamined": "THORAX", "ViewPosition": "AP"}, ""),
    ({"BodyPartExamined": "KNEE"}, "the DICOM header says body part KNEE, not the chest"),
    ({"BodyPartExamined": "CHEST", "ViewPosition": "LL"}, "view position LL: a lateral view"),
    ({"ViewPosition": "LAO"}, "view position LAO: not a frontal (PA/AP) view"),
])
def test_header_scope_flags_other_body_parts_and_views(tmp_path, elements, expected):
    from hfxray.imaging import check_image, load_rgb, out_of_scope

    path = _dicom(tmp_path, **elements)
    assert out_of_scope(load_rgb(path)) == check_image(path).out_of_scope
    if expected:
        assert expected in out_of_scope(load_rgb(path))
    else:
        assert out_of_scope(load_rgb(path)) == ""


@pytest.mark.parametrize("family", ["vit", "bit", "hybrid"])
def test_features_are_the_head_input_for_every_family(tiny_models, family):
    import torch

    from hfxray.families import adapter_for
    from hfxray.models import load_trained
    from hfxray.scope import first_convolution

    from hfxray.transforms import Geometry

    model, processor = load_trained(str(tiny_models / family))
    head = adapter_for(model).checked_head(model)
    side = Geometry.from_processor(processor).crop
    pixels = torch.randn(3, 3, side, side)
    with torch.no_grad(), capture_features(model.eval()) as captured:
        model(pixel_values=pixels)
    features = stacked(captured)
    assert features["features"].shape == (3, head.in_features)
    assert features["first layer"].shape == (3, 2 * first_convolution(model).out_channels)
    assert not head._forward_pre_hooks  # the hooks are gone after the block


def test_fit_flags_about_one_percent_of_new_images_like_the_training_ones():
    rng = np.random.default_rng(0)
    covariance = np.diag(np.linspace(0.1, 3.0, 8))
    train = {"features": rng.multivariate_normal(np.zeros(8), covariance, 2000)}
    check = fit_ood(train)
    new = {"features": rng.multivariate_normal(np.zeros(8), covariance, 4000)}
    rate = np.mean([r.flagged for r in check.judge(new)])
    assert 0.003 < rate < 0.02, rate  # out-of-fold percentiles: not the in-sample optimism
    shifted = {"features": new["features"][:50] + 3 * np.sqrt(np.diag(covariance))}
    assert all(r.flagged for r in check.judge(shifted))


def test_runs_are_trained_with_a_check_that_flags_few_validation_images(tiny_runs):
    for family in ("vit", "bit"):
        run = tiny_runs[family]
        assert (run / OOD_JSON).is_file() and (run / OOD_TENSORS).is_file()
        assert (run / OOD_TENSORS).stat().st_size < 100_000  # small beside the model
        info = json.loads((run / OOD_JSON).read_text())
        assert info["fitted_on"] == ["train"] and info["n_images"] > 400
        assert info["validation_flagged"]["rate"] <= 0.05, info["validation_flagged"]
        assert set(info["layers"]) == {"features", "first layer"}


def _predict(run: Path, files, out: Path) -> dict[str, dict]:
    from hfxray.cli import main

    assert main(["predict", *map(str, files), "--model", str(run), "--out", str(out)]) == 0
    return {Path(row["file"]).stem: row for row in json.loads(out.read_text())}


@pytest.mark.parametrize("family", ["vit", "bit"])
def test_wg04_chest_passes_and_limb_is_flagged_by_header_and_by_ood(tiny_runs, wg04, family, tmp_path):
    rows = _predict(tiny_runs[family], list(wg04.values()), tmp_path / "p.json")
    scores = {name: row["ood_score"] for name, row in rows.items()}
    for name in WG04_CHEST:
        assert rows[name]["error"] == "" and rows[name]["ood"] == IN_RANGE and rows[name]["warning"] == "", rows[name]
    # Lossless encodings decode to the same pixels, hence the same answer; so do the lossy file and its decoding.
    for first, second in (("RG1_UNCR", "RG1_J2KR"), ("RG1_UNCI", "RG1_J2KI")):
        assert rows[first]["p_virus"] == rows[second]["p_virus"] and scores[first] == scores[second]
    threshold = OodCheck.load(tiny_runs[family]).threshold
    for name in WG04_LIMB:
        row = rows[name]
        assert row["label"] and row["ood"] == FLAGGED, (row, threshold)  # still predicted, and flagged
        assert "body part EXTREMITY, not the chest" in row["warning"] and "unlike the training images" in row["warning"]
        assert row["ood_score"] > 1.3 * threshold  # not a near miss
    assert max(scores[name] for name in WG04_CHEST) < threshold


def test_run_without_a_check_says_not_checked(tiny_runs, wg04, tmp_path, capfd):
    run = tmp_path / "old-run"
    shutil.copytree(tiny_runs["vit"], run, ignore=shutil.ignore_patterns("checkpoint-*", "runs", "ood.*"))
    rows = _predict(run, [wg04["RG3_UNCR"], wg04["RG1_UNCR"]], tmp_path / "p.json")
    assert {row["ood"] for row in rows.values()} == {NOT_CHECKED}
    assert rows["RG1_UNCR"]["ood_score"] is None and rows["RG1_UNCR"]["warning"] == ""
    assert "body part EXTREMITY" in rows["RG3_UNCR"]["warning"]  # the header still speaks
    assert "out-of-distribution check: not checked" in capfd.readouterr().err


def test_ood_command_refits_an_old_run_to_the_same_check(tiny_runs, prepared_dir, tmp_path, capsys):
    from hfxray.cli import main

    run = tmp_path / "old-run"
    shutil.copytree(tiny_runs["bit"], run, ignore=shutil.ignore_patterns("checkpoint-*", "runs", "ood.*"))
    assert main(["ood", "--model", str(run), "--data-dir", str(prepared_dir)]) == 0
    assert "validation images" in capsys.readouterr().out
    assert OodCheck.load(run).threshold == pytest.approx(OodCheck.load(tiny_runs["bit"]).threshold, rel=1e-6)
    assert main(["ood", "--model", str(tmp_path / "nope"), "--data-dir", str(prepared_dir)]) == 2


def test_explain_says_which_images_are_out_of_scope(tiny_runs, wg04, tmp_path):
    from hfxray.explain import explain_images

    result = explain_images(tiny_runs["bit"], "gradcam", [wg04["RG3_UNCR"]], tmp_path)
    (row,) = result.rows
    assert row["ood"] == FLAGGED and "EXTREMITY" in row["warning"] and "unlike the training images" in row["warning"]


def test_a_check_that_cannot_be_fitted_says_why():
    from hfxray.scope import OodError

    with pytest.raises(OodError, match="too few"):
        fit_ood({"features": np.zeros((10, 4))})
    with pytest.raises(OodError, match="NaN"):
        fit_ood({"features": np.full((40, 4), np.nan)})
