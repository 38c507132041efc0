"""Explanation outputs a reader can trust: degenerate maps are flagged, figures never overwrite another model's, and
the reliability diagram's colours and legend say what is drawn."""

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
from hfxray.explain import explain_images, gradcam_with_status
from hfxray.explain.gradcam import LogitMargin, judge
from hfxray.metrics import RELIABILITY_COLORS, apply_temperature, reliability_figure
from hfxray.models import create_model


def test_judge_names_empty_and_constant_maps():
    assert judge(np.zeros((4, 4))) == ("empty", 0.0)
    assert judge(-np.ones((4, 4)))[0] == "empty"
    assert judge(np.full((4, 4), 1e-9) - np.eye(4))[0] == "empty"  # positive part far below the rest
    assert judge(np.full((4, 4), 0.3))[0] == "constant"
    assert judge(np.full((1, 1), 2.0))[0] == "constant"
    assert judge(np.array([[np.nan, 1.0]]))[0] == "empty"
    status, share = judge(np.array([[1.0, -1.0], [2.0, 0.0]]))
    assert status == "ok" and share == pytest.approx(0.75)


def test_logit_margin_is_the_softmax_log_odds():
    logits = torch.tensor([0.5, -1.0, 2.0])
    assert LogitMargin(2)(logits).item() == pytest.approx(2.0 - torch.logsumexp(torch.tensor([0.5, -1.0]), 0).item())
    assert LogitMargin(0)(torch.tensor([-3.0, -4.0])).item() == pytest.approx(1.0)  # binary: logit minus the other
    target = LogitMargin()
    assert target(torch.tensor([-3.0, -2.0])).item() == pytest.approx(1.0) and target.chosen == 1


def _bit_with_head(weight_virus: float, weight_normal: float, bias=(0.0, 0.0)):
    torch.manual_seed(0)
    model, processor, _ = create_model("bit", "tiny", image_size=128)
    with torch.no_grad():
        head = model.classifier[1]
        head.weight[0].fill_(weight_normal)
        head.weight[1].fill_(weight_virus)
        head.bias.copy_(torch.tensor(bias))
    return model.eval(), processor


def test_a_predicted_class_with_a_negative_logit_still_gets_a_map():
    # Both logits negative, virus the less negative: behind the pooled ReLU features the plain virus-logit map
    # sums to that negative logit and its positive part is empty; the margin's map is not.
    model, _ = _bit_with_head(-0.5, -1.0)
    images = torch.randn(4, 3, 128, 128, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    with torch.no_grad():
        logits = model(pixel_values=images).logits
    assert (logits.argmax(-1) == 1).all() and (logits < 0).all()
    result = gradcam_with_status(model, images)
    assert result.classes == [1, 1, 1, 1] and result.status == ["ok"] * 4
    assert all(heatmap.max() == pytest.approx(1.0) for heatmap in result.maps)
    assert result.layer == "bit.encoder.stages[-1]" and result.quantity == "logit margin"


def test_a_degenerate_map_is_flagged_on_the_figure_and_in_the_summary(tmp_path, capsys):
    # A head that ignores the features decides by its bias alone: there is nothing to locate.
    model, processor = _bit_with_head(0.0, 0.0, bias=(0.0, 1.0))
    model.save_pretrained(tmp_path / "bias-only")
    processor.save_pretrained(tmp_path / "bias-only")
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (140, 150), dtype=np.uint8)).save(images / "a.png")
    out = tmp_path / "maps"
    assert main(["explain", "--model", str(tmp_path / "bias-only"), "--method", "gradcam", "--out", str(out),
                 str(images)]) == 0
    captured = capsys.readouterr()
    assert "1 degenerate map(s)" in captured.out and "degenerate map (no-gradient)" in captured.err
    rows = list(csv.DictReader(open(out / "bias-only.gradcam.csv")))
    assert [(row["figure"], row["status"], row["explained"]) for row in rows] == \
        [("a.bias-only.gradcam.png", "no-gradient", "virus")]
    summary = json.loads((out / "bias-only.gradcam.json").read_text())
    assert summary["degenerate"] == 1 and summary["statuses"] == {"no-gradient": 1}
    # The warning is drawn in the warning red, which a plain figure does not contain.
    with Image.open(out / "a.bias-only.gradcam.png") as figure:
        pixels = np.asarray(figure.convert("RGB")).reshape(-1, 3).astype(int)
    assert (np.abs(pixels - [0xB0, 0x00, 0x20]).sum(axis=1) < 30).sum() > 500


@pytest.fixture(scope="module")
def model_dirs(tiny_models, tmp_path_factory):
    """Tiny random vit and bit folders saved like training runs, and a second `bit` folder elsewhere."""
    root = tmp_path_factory.mktemp("models")
    for kind in ("vit", "bit"):
        shutil.copytree(tiny_models / kind, root / kind)
    shutil.copytree(root / "bit", root / "elsewhere" / "bit")
    return root


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name in ("one", "two"):
        Image.fromarray(rng.integers(0, 256, (80, 72), dtype=np.uint8)).save(folder / f"{name}.png")
    return folder


def test_figures_of_several_models_and_methods_share_a_folder(model_dirs, images, tmp_path):
    out = tmp_path / "maps"
    for model, method in (("vit", "rollout"), ("bit", "gradcam"), ("vit", "actmax")):
        assert main(["explain", "--model", str(model_dirs / model), "--method", method, "--out", str(out),
                     *([] if method == "actmax" else [str(images)]), *(["--steps", "2"] if method == "actmax"
                                                                         else [])]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == sorted([
        f"{image}.{model}.{method}.png" for image in ("one", "two")
        for model, method in (("bit", "gradcam"), ("vit", "rollout"))] + ["vit.actmax.png"])
    assert sorted(p.name for p in out.glob("*.csv")) == ["bit.gradcam.csv", "vit.rollout.csv"]


def test_a_rerun_replaces_its_own_figures_and_refuses_anothers(model_dirs, images, tmp_path, capsys):
    out = tmp_path / "maps"

    def explain(model_dir, method: str = "gradcam") -> int:
        return main(["explain", "--model", str(model_dir), "--method", method, "--out", str(out), str(images)])

    assert explain(model_dirs / "bit") == 0
    first = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert explain(model_dirs / "bit") == 0  # same model, same method: its own figures are replaced
    assert {p.name for p in out.iterdir()} == set(first)
    assert all(p.stat().st_mtime_ns >= first[p.name] for p in out.iterdir())
    capsys.readouterr()

    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # Another model whose folder has the same name would write the same file names: refused, nothing touched.
    assert explain(model_dirs / "elsewhere" / "bit") == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "exists and was written by" in errors[0] and "To fix:" in errors[0]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    (out / "one.vit.rollout.png").write_bytes(b"a file hfxray did not write")
    assert explain(model_dirs / "vit", "rollout") == 2
    assert "written by something else" in capsys.readouterr().err
    assert not (out / "two.vit.rollout.png").exists()

    # The summary CSV is checked itself, not only through its .json twin: a user's file of that name is kept.
    (out / "bit.gradcam.csv").write_text("my own notes\n")
    assert explain(model_dirs / "bit") == 2
    assert "bit.gradcam.csv exists and was written by something else" in capsys.readouterr().err
    assert (out / "bit.gradcam.csv").read_text() == "my own notes\n"


def test_the_api_takes_the_same_care(model_dirs, images, tmp_path):
    model_dir = model_dirs / "bit"
    result = explain_images(str(model_dir), "gradcam", [images], tmp_path)
    assert [p.name for p in result.figures] == ["one.bit.gradcam.png", "two.bit.gradcam.png"]
    assert result.summary_csv.name == "bit.gradcam.csv" and len(result.rows) == 2
    assert {row["layer"] for row in result.rows} == {"bit.encoder.stages[-1]"}
    again = explain_images(str(model_dir), "gradcam", [images], tmp_path)
    assert again.figures == result.figures


# ---------------------------------------------------------------- reliability diagram


def _patches_by_gid(figure):
    found: dict[str, list] = {}
    for axis in figure.axes:
        for patch in axis.patches:
            if patch.get_gid():
                found.setdefault(patch.get_gid(), []).append(patch)
    return found


def test_reliability_gaps_are_drawn_in_their_legend_colours_and_the_legend_covers_no_bar():
    rng = np.random.default_rng(3)
    d = rng.normal(0, 2, 400)
    labels = (rng.random(400) < 1 / (1 + np.exp(-d))).astype(int)
    logits = np.stack([-d / 2, d / 2], axis=1)
    # T > 1 makes the model under-confident, T < 1 over-confident: both gap kinds appear.
    figure = reliability_figure(labels, apply_temperature(logits, 2.5), "t", probs_after=apply_temperature(logits,
                                                                                                          0.4))
    figure.canvas.draw()
    patches = _patches_by_gid(figure)
    assert patches["gap-over"] and patches["gap-under"]
    legend = figure.legends[0]
    legend_colours = {tuple(np.round(handle.get_facecolor(), 3)) for handle in legend.legend_handles
                      if hasattr(handle, "get_facecolor")}
    for gid, name in (("accuracy", "accuracy"), ("gap-over", "over"), ("gap-under", "under")):
        for patch in patches[gid]:
            colour = tuple(np.round(patch.get_facecolor(), 3))
            assert colour in legend_colours, f"{gid} drawn in {colour}, legend has {legend_colours}"
            assert colour[3] == 1.0  # opaque: nothing shows through as a colour the legend lacks
    from matplotlib.colors import to_rgba
    assert {tuple(np.round(to_rgba(c), 3)) for c in RELIABILITY_COLORS.values()} <= legend_colours

    renderer = figure.canvas.get_renderer()
    box = legend.get_window_extent(renderer)
    for axis in figure.axes:
        assert not box.overlaps(axis.get_window_extent(renderer)), "the legend sits on a panel"
    for bar in (patch for group in patches.values() for patch in group):
        assert not box.overlaps(bar.get_window_extent(renderer))
