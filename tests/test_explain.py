"""Sanity checks that can fail (planted signal, model randomisation, activation maximization) and the CLI.

The planted-signal models are the registry's tiny models trained for seconds on 64 px gray noise where class 1
("virus") carries a bright 16 px square somewhere in the top-left quadrant and class 0 has none. A faithful map
of class 1 must put clearly more than its area's share of mass on the square; a map that survives re-initialising
the weights explains the image, not the model (Adebayo et al. 2018).
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

SIZE, SQUARE = 64, 16
AREA_SHARE = SQUARE * SQUARE / (SIZE * SIZE)
LEARNING_RATES = {"vit": 1e-3, "bit": 2e-3, "hybrid": 1e-3}
MAPS = {"gradcam": lambda model, x: gradcam_map(model, x, target_class=1), "rollout": rollout_map}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Other jobs share these 2 cores: with 2 threads a tiny training step took 0.2 s instead of 0.007 s."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def planted(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pixel_values in [-1, 1], labels, (row, col) of each class-1 square) on gray noise."""
    generator = torch.Generator().manual_seed(seed)
    gray = 0.5 + 0.1 * torch.randn(count, SIZE, SIZE, generator=generator)
    labels = torch.randint(0, 2, (count,), generator=generator)
    corners = torch.randint(0, SIZE // 2 - SQUARE + 1, (count, 2), generator=generator)
    axis = torch.arange(SIZE)
    inside = [(axis >= corners[:, i, None]) & (axis < corners[:, i, None] + SQUARE) for i in (0, 1)]
    square = inside[0][:, :, None] & inside[1][:, None, :] & (labels[:, None, None] == 1)
    gray = torch.where(square, torch.tensor(0.95), gray).clamp(0, 1)
    return ((gray[:, None].expand(-1, 3, -1, -1) - 0.5) / 0.5).contiguous(), labels, corners


@pytest.fixture(scope="module")
def trained():
    """kind -> (model, processor) trained on the planted task (cached: each kind trains once, in seconds)."""
    cache: dict[str, tuple] = {}
    images, labels, _ = planted(2048, seed=1)
    test_images, test_labels, _ = planted(256, seed=99)

    def get(kind: str):
        if kind not in cache:
            torch.manual_seed(0)
            model, processor, _ = create_model(kind, "tiny")
            optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATES[kind])
            generator, smoothed = torch.Generator().manual_seed(0), 0.7
            model.train()
            for _ in range(400):
                batch = torch.randint(0, len(images), (32,), generator=generator)
                loss = torch.nn.functional.cross_entropy(model(pixel_values=images[batch]).logits, labels[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                smoothed = 0.9 * smoothed + 0.1 * loss.item()
                if smoothed < 0.05:
                    break
            model.eval().zero_grad(set_to_none=True)
            with torch.no_grad():
                accuracy = (model(pixel_values=test_images).logits.argmax(-1) == test_labels).float().mean().item()
            assert accuracy >= 0.95, f"{kind} did not learn the planted signal (accuracy {accuracy:.2f})"
            cache[kind] = (model, processor)
        return cache[kind]

    return get


def virus_images(count: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels, corners = planted(256, seed=99)
    chosen = (labels == 1).nonzero()[:count, 0]
    return images[chosen], corners[chosen]


def mass_ratio(heatmap: np.ndarray, corner: torch.Tensor) -> float:
    """Share of the map's mass on the square, divided by the share its area would get from a flat map."""
    row, col = corner.tolist()
    return float(heatmap[row:row + SQUARE, col:col + SQUARE].sum() / heatmap.sum() / AREA_SHARE)


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman of two maps; a constant map carries no ranking, so it counts as uncorrelated (0)."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a.ravel(), b.ravel())[0])


LOCALISATION_CASES = [
    ("vit", "gradcam"),
    ("vit", "rollout"),
    ("hybrid", "gradcam"),
    pytest.param("bit", "gradcam", marks=pytest.mark.xfail(strict=True, reason=(
        "measured mean ratio 0.23: tiny BiT's last stage is 2x2 at 64 px (4x4 at 128 px, still ~1.0) and "
        "routes the evidence through the cells WITHOUT the square (CAM is exact there: GroupNorm+ReLU, average "
        "pool, linear head); earlier stages localise (stage 0: ~3)"))),
    pytest.param("hybrid", "rollout", marks=pytest.mark.xfail(strict=True, reason=(
        "measured mean ratio 0.25: the tiny hybrid has a 2x2 token grid at 64 px and its class token attends away "
        "from the square"))),
]


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "method"), LOCALISATION_CASES)
def test_planted_signal_gets_at_least_twice_its_area_share(trained, kind, method):
    model, _ = trained(kind)
    images, corners = virus_images()
    maps = MAPS[method](model, images)
    assert maps.shape == (len(images), SIZE, SIZE)
    assert maps.min() >= 0 and maps.max() <= 1
    ratios = [mass_ratio(heatmap, corner) for heatmap, corner in zip(maps, corners)]
    assert np.mean(ratios) >= 2.0, f"{kind} {method}: mass ratios {np.round(ratios, 2)}"


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "method"), [
    ("vit", "gradcam"), ("vit", "rollout"), ("bit", "gradcam"), ("hybrid", "gradcam"),
    pytest.param("hybrid", "rollout", marks=pytest.mark.xfail(strict=False, reason=(
        "measured mean Spearman ~0.51: maps upsampled from a 2x2 token grid share most of their ranking whatever "
        "the weights, so the check has little power at this size"))),
])
def test_maps_change_when_the_weights_are_reinitialised(trained, kind, method):
    model, _ = trained(kind)
    torch.manual_seed(1)
    random_model = type(model)(model.config).eval()
    images, _ = virus_images()
    correlations = [rank_correlation(a, b) for a, b in zip(MAPS[method](model, images),
                                                            MAPS[method](random_model, images))]
    assert np.mean(correlations) < 0.5, f"{kind} {method}: Spearman {np.round(correlations, 2)}"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["vit", "bit", "hybrid"])
def test_activation_maximization_raises_the_target_logit(trained, kind):
    # Class 1: the gray start already scores as class 0 at its plateau, so only class 1 has room to rise.
    model, processor = trained(kind)
    before = [p.detach().clone() for p in model.parameters()]
    result = activation_maximization(model, processor, target_class=1, steps=200)
    assert result.rise >= 1.0, f"{kind}: logits {result.start_logits} -> {result.end_logits}"
    assert result.end_logits[1] > result.end_logits[0]
    assert result.image.shape == (SIZE, SIZE, 3) and result.image.dtype == np.uint8
    assert -1.0 <= result.pixel_values.min() and result.pixel_values.max() <= 1.0  # (0 - 0.5)/0.5 .. (1 - 0.5)/0.5
    assert all(torch.equal(a, b) and b.grad is None for a, b in zip(before, model.parameters()))


def test_rollout_refuses_bit():
    model, _, _ = create_model("bit", "tiny")
    with pytest.raises(NotApplicable, match="gradcam"):
        rollout_map(model, torch.zeros(1, 3, SIZE, SIZE))


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """Tiny random vit and bit folders saved like a training run (config, weights, preprocessor)."""
    root = tmp_path_factory.mktemp("models")
    for kind in ("vit", "bit"):
        model, processor, _ = create_model(kind, "tiny")
        model.save_pretrained(root / kind)
        processor.save_pretrained(root / kind)
    return root


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
    assert sorted(p.name for p in out.iterdir()) == ["color.gradcam.png", "gray.gradcam.png"]
    assert "broken.png: not an image" in captured.err
    assert "explained 2 of 3 images" in captured.out and "skipped 1 unreadable" in captured.out

    code = main(["explain", "--model", str(model_dirs / "vit"), "--method", "rollout", "--out", str(out),
                 str(images / "gray.png")])
    assert code == 0 and (out / "gray.rollout.png").is_file()


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
    with Image.open(out / "actmax.png") as grid:
        assert grid.height > grid.width  # two rows of two classes, each about square
