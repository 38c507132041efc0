"""Sanity checks that can fail (planted signal, model randomisation, activation maximization) and the CLI.

The planted-signal models are trained for seconds on gray noise where class 1 ("virus") carries a bright square
somewhere in the top-left quadrant and class 0 a bright bar of the same area there. Both classes have the same
pixel histogram, so the class is decided by the patch itself: when only class 1 had a bright object, GroupNorm
(BiT, the hybrid's stem) let the models read its presence from image-wide statistics at every position, and a
faithful map of such a model need not point at the square. A faithful map of class 1 must put clearly more than
its area's share of mass on the square; a map that survives re-initialising the weights explains the image, not
the model (Adebayo et al. 2018).

BiT and the hybrid are trained as their `small` presets (still under 1.5 M parameters). Tiny BiT (8-64 channels)
learns the task but its 2x2 (64 px) or 4x4 (128 px) last stage spreads the evidence: mass ratios 0.8-2.3 over
seeds. The tiny hybrid's rollout came out 1.5-2.9 over seeds, at the ceiling a 2x2 token grid allows.

These are the synthetic counterpart of tests/test_explain_control.py (real X-rays, a burnt-in marker the model is
trained to use). A family's planted-signal case here is removed once that control passes for it; today it passes
for none (docs/explanations.md). One case is gone for another reason: the hybrid's Grad-CAM (a small hybrid at
128 px, 100 s of training) passed only on its fixed seed (mass ratio 3.43; 0.50 for another model seed and other
images), so test_explain_control.py alone now covers hybrid Grad-CAM, as a strict xfail. The randomisation tests
still run on every (kind, method), the hybrid's Grad-CAM on its 64 px planted model.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import spearmanr

from hfxray.cli import main
from hfxray.explain import NotApplicable, activation_maximization, gradcam_map, rollout_map
from hfxray.models import create_model

from tiny_fit import fit

LEARNING_RATES = {"vit": 1e-3, "bit": 2e-3, "hybrid": 3e-4}
# kind -> (preset, input size, square side in px); BiT's stride-32 last stage needs 128 px for a 4x4 map.
PLANTED = {"vit": ("tiny", 64, 16), "hybrid": ("small", 64, 16), "bit": ("small", 128, 16)}


def setup(kind: str, method: str | None = None) -> tuple[str, int, int]:
    """(preset, input size, square side) of the planted model a test of `kind` uses (one per kind for every method)."""
    return PLANTED[kind]

MAPS = {"gradcam": lambda model, x: gradcam_map(model, x, target_class=1), "rollout": rollout_map}


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Every test here trains or explains tiny models: one torch thread (see conftest)."""


def planted(count: int, seed: int, size: int, square: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pixel_values in [-1, 1], labels, (row, col) of each image's square or bar) on gray noise.

    Class 1 gets a `square` x `square` bright patch, class 0 a bright bar `square / 2` high and `2 * square` wide,
    both inside the top-left quadrant.
    """
    generator = torch.Generator().manual_seed(seed)
    gray = 0.5 + 0.1 * torch.randn(count, size, size, generator=generator)
    labels = torch.randint(0, 2, (count,), generator=generator)
    heights = torch.where(labels == 1, square, square // 2)[:, None]
    widths = torch.where(labels == 1, square, 2 * square)[:, None]
    rows = (torch.rand(count, 1, generator=generator) * (size // 2 - heights + 1)).long()
    cols = (torch.rand(count, 1, generator=generator) * (size // 2 - widths + 1)).long()
    axis = torch.arange(size)[None]
    patch = (((axis >= rows) & (axis < rows + heights))[:, :, None] & ((axis >= cols) & (axis < cols + widths))[:, None])
    gray = torch.where(patch, torch.tensor(0.95), gray).clamp(0, 1)
    return ((gray[:, None].expand(-1, 3, -1, -1) - 0.5) / 0.5).contiguous(), labels, torch.cat([rows, cols], 1)


@pytest.fixture(scope="module")
def trained():
    """(kind, method) -> (model, processor) trained on the planted task (cached per setup, seconds each)."""
    cache: dict[tuple, tuple | str] = {}

    def get(kind: str, method: str | None = None):
        key = (kind, *setup(kind, method))
        if key not in cache:  # a model that fails to learn is cached as its message, not trained again per test
            preset, size, square = setup(kind, method)
            images, labels, _ = planted(2048, seed=1, size=size, square=square)
            test_images, test_labels, _ = planted(256, seed=99, size=size, square=square)
            torch.manual_seed(0)
            model, processor, _ = create_model(kind, preset, image_size=size)

            def batches(generator, images=images, labels=labels):
                batch = torch.randint(0, len(images), (32,), generator=generator)
                return images[batch], labels[batch]

            fit(model, LEARNING_RATES[kind], 400, batches)
            with torch.no_grad():
                accuracy = (model(pixel_values=test_images).logits.argmax(-1) == test_labels).float().mean().item()
            cache[key] = ((model, processor) if accuracy >= 0.95
                          else f"{kind} did not learn the planted signal (accuracy {accuracy:.2f})")
        if isinstance(cache[key], str):
            raise AssertionError(cache[key])
        return cache[key]

    return get


def virus_images(kind: str, method: str | None = None, count: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    _, size, square = setup(kind, method)
    images, labels, corners = planted(256, seed=99, size=size, square=square)
    chosen = (labels == 1).nonzero()[:count, 0]
    return images[chosen], corners[chosen]


def mass_ratio(heatmap: np.ndarray, corner: torch.Tensor, square: int) -> float:
    """Share of the map's mass on the square, divided by the share its area would get from a flat map.

    A blank (degenerate) map puts nothing on the square: 0.
    """
    row, col = corner.tolist()
    if heatmap.sum() == 0:
        return 0.0
    area_share = square * square / heatmap.size
    return float(heatmap[row:row + square, col:col + square].sum() / heatmap.sum() / area_share)


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman of two maps; a constant map carries no ranking, so it counts as uncorrelated (0)."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a.ravel(), b.ravel())[0])


EXPLAINED = [("vit", "gradcam"), ("vit", "rollout"), ("bit", "gradcam"), ("hybrid", "gradcam"), ("hybrid", "rollout")]
# The tiny ViT's Grad-CAM layer is the input of its second-to-last block, which in a 2-block model is its first:
# on the planted task its maps put 1.5x, not 2x, their area's share on the square (mean of 16 maps, seeds fixed).
# Recorded, not hidden: the positive control on real X-rays (test_explain_control.py) is the check that counts.
KNOWN_SHORT = {("vit", "gradcam"): "tiny ViT Grad-CAM at its first block: mass ratio 1.5 < 2"}
# The hybrid's Grad-CAM is checked by the positive control on real X-rays only (test_explain_control.py, where it
# fails). Its planted case here (small hybrid at 128 px, since its stride-32 token grid has 2x2 cells at 64 px) cost
# 100 s and passed by the seed: mass ratio 3.43 for the fixed seeds, 0.50 for model seed 1 on other images.
PLANTED_EXPLAINED = [case for case in EXPLAINED if case != ("hybrid", "gradcam")]


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "method"), [
    pytest.param(kind, method, marks=pytest.mark.xfail(reason=KNOWN_SHORT[(kind, method)], strict=False))
    if (kind, method) in KNOWN_SHORT else (kind, method) for kind, method in PLANTED_EXPLAINED])
def test_planted_signal_gets_at_least_twice_its_area_share(trained, kind, method):
    model, _ = trained(kind, method)
    _, size, square = setup(kind, method)
    images, corners = virus_images(kind, method)
    maps = MAPS[method](model, images)
    assert maps.shape == (len(images), size, size)
    assert maps.min() >= 0 and maps.max() <= 1
    ratios = [mass_ratio(heatmap, corner, square) for heatmap, corner in zip(maps, corners)]
    assert np.mean(ratios) >= 2.0, f"{kind} {method}: mass ratios {np.round(ratios, 2)}"


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "method"), EXPLAINED)
def test_maps_change_when_the_weights_are_reinitialised(trained, kind, method):
    model, _ = trained(kind, method)
    torch.manual_seed(1)
    random_model = type(model)(model.config).eval()
    images, _ = virus_images(kind, method)
    # |Spearman|: a map ranked backwards (-0.6) is as much a copy of the trained one as +0.6, and signed values of
    # opposite sign cancel in a mean. The full check, against a random-vs-random baseline, is
    # tests/test_explain_real.py's cascading randomisation on real X-rays.
    correlations = [abs(rank_correlation(a, b)) for a, b in zip(MAPS[method](model, images),
                                                                 MAPS[method](random_model, images))]
    assert np.mean(correlations) < 0.5, f"{kind} {method}: |Spearman| {np.round(correlations, 2)}"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["vit", "bit", "hybrid"])
def test_activation_maximization_raises_the_target_logit(trained, kind):
    # Target the class the gray start does NOT score as: the predicted one may already sit at its plateau.
    model, processor = trained(kind)
    before = [p.detach().clone() for p in model.parameters()]
    target = int(np.argmin(activation_maximization(model, processor, target_class=1, steps=1).start_logits))
    result = activation_maximization(model, processor, target_class=target, steps=200)
    assert result.rise >= 1.0, f"{kind}: logits {result.start_logits} -> {result.end_logits}"
    assert result.end_logits[target] > result.end_logits[1 - target]
    _, size, _ = PLANTED[kind]
    assert result.image.shape == (size, size, 3) and result.image.dtype == np.uint8
    assert -1.0 <= result.pixel_values.min() and result.pixel_values.max() <= 1.0  # (0 - 0.5)/0.5 .. (1 - 0.5)/0.5
    assert all(torch.equal(a, b) and b.grad is None for a, b in zip(before, model.parameters()))


def test_rollout_refuses_bit():
    model, _, _ = create_model("bit", "tiny")
    with pytest.raises(NotApplicable, match="gradcam"):
        rollout_map(model, torch.zeros(1, 3, 64, 64))


@pytest.fixture(scope="module")
def model_dirs(tiny_models):
    """Tiny random vit and bit folders saved like a training run (config, weights, preprocessor)."""
    return tiny_models


def test_cli_explains_good_images_and_reports_the_bad_one(model_dirs, tmp_path, capsys):
    images = tmp_path / "images"
    (images / "nested").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (90, 70), dtype=np.uint8)).save(images / "gray.png")
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(images / "nested" / "color.jpg")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    out = tmp_path / "out"
    code = main(["explain", "--model", str(model_dirs / "vit"), "--method", "gradcam", "--out", str(out),
                 str(images)])
    captured = capsys.readouterr()
    assert code == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["color.vit.gradcam.png", "gray.vit.gradcam.png"]
    assert "broken.png: not an image" in captured.err
    assert "explained 2 of 3 images" in captured.out and "skipped 1 unreadable" in captured.out

    code = main(["explain", "--model", str(model_dirs / "vit"), "--method", "rollout", "--out", str(out),
                 str(images / "gray.png")])
    assert code == 0 and (out / "gray.vit.rollout.png").is_file()


def test_cli_errors_are_one_line_and_nonzero(model_dirs, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"")
    out = str(tmp_path / "out")
    assert main(["explain", "--model", str(tmp_path / "missing"), "--method", "gradcam", "--out", out,
                 str(broken)]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["explain", "--model", str(model_dirs / "bit"), "--method", "rollout", "--out", out,
                 str(broken)]) == 2
    assert "rollout does not apply to bit" in capsys.readouterr().err
    assert main(["explain", "--model", str(model_dirs / "bit"), "--method", "gradcam", "--target-class", "bacteria",
                 "--out", out, str(broken)]) == 2
    assert "unknown class 'bacteria'" in capsys.readouterr().err
    assert main(["explain", "--model", str(model_dirs / "bit"), "--method", "gradcam", "--out", out,
                 str(broken)]) == 1
    assert "zero-byte file" in capsys.readouterr().err


def test_cli_actmax_grid_has_a_row_per_model(model_dirs, tmp_path):
    out = tmp_path / "out"
    assert main(["explain", "--model", str(model_dirs / "vit"), "--model", str(model_dirs / "bit"),
                 "--method", "actmax", "--steps", "3", "--out", str(out)]) == 0
    with Image.open(out / "vit+bit.actmax.png") as grid:
        assert grid.height > grid.width  # two rows of two classes, each about square
