"""Sanity checks of the maps of models trained on the real sample, not on planted toys.

Each kind's scratch model (BiT and the hybrid `small`, ViT `tiny`, see conftest's REAL_TRAINING) is trained once per
session for a few epochs on the real CoronaHack sample (skipped with a reason when it is absent), then the test
split (92 images) is explained:
- at least 95 % of the images get a non-degenerate Grad-CAM map for their predicted class (`gradcam_with_status`; BiT
  and the hybrid: ViT does not offer Grad-CAM);
- cascading randomisation (Adebayo et al. 2018), as `hfxray explain --sanity` runs it on 16 of them: once every
  layer is re-initialised, top first, the maps are no closer to the trained ones than two random models' maps are
  to each other (mean |Spearman|; hfxray/explain/sanity.py states the bar);
- data randomisation, as `hfxray explain --sanity --permuted-model` runs it: the maps of the same kind trained the
  same way on labels shuffled between the classes (conftest's `permuted_runs`), against the same baseline;
- localisation against the uniform map: the lift over the body and over the dark border (border = dark pixels
  connected to the image's edge, `hfxray.explain.localisation.body_mask`). The body covers nearly all of these
  crops, so a share of mass "inside the body" says nothing; on the bordered images the trained maps must put less
  mass on the border than a uniform map does (lift < 1).
The positive control (a planted marker the model must use and the maps must find) is tests/test_explain_control.py.
The same runs first show that each kind's scratch recipe learns clearly better than chance (the from-scratch
control's own check, kept here so that one training per kind serves both).
"""

from __future__ import annotations

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch

from hfxray.explain import gradcam_with_status, load_model
from hfxray.imaging import expand_paths, load_rgb

KINDS = ("vit", "bit", "hybrid")
BORDERED = 0.05  # images whose border covers at least this share of the crop are checked on their own

pytestmark = pytest.mark.slow


# What the checks measured, written at the end of the module when $HFXRAY_EXPLAIN_RESULTS names a file
# (docs/explanations.md renders its randomisation and localisation tables from that file).
MEASURED: dict[str, dict] = {"cascading": {}, "data_randomisation": {}, "localisation": {}}
# Each kind's shown map under data randomisation, as measured (docs/explanations.md): findings, asserted so that a
# change shows. BiT's Grad-CAM passes; the tiny ViT's rollout stays close to the permuted-label model's maps (+0.38
# over the baseline), as it does under cascading randomisation; the hybrid's Grad-CAM sits at the bar (+0.154 against
# +0.15), where the verdict could go either way with the last digits of a run, so what is asserted is that it stays
# within 0.03 of the bar.
DATA_RANDOMISATION = {"vit": "fails", "bit": "passes", "hybrid": "at the bar"}
AT_THE_BAR = 0.03


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Every test here trains or explains tiny models: one torch thread (see conftest)."""


@pytest.fixture(scope="module", autouse=True)
def _write_measured():
    yield
    out = os.environ.get("HFXRAY_EXPLAIN_RESULTS")
    if out:
        from pathlib import Path

        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(MEASURED, indent=1) + "\n")


@pytest.fixture(scope="session")
def explained(real_runs, prepared_dir):
    """kind -> (test-split pixel values, labels, Grad-CAM of the trained model (None where the family does not
    offer Grad-CAM: ViT), None, the model)."""
    files = sorted(expand_paths([prepared_dir / "test"]))
    cache = {}

    def get(kind: str):
        if kind not in cache:
            model, processor = load_model(real_runs(kind))
            pixels = torch.cat([processor(images=load_rgb(path), return_tensors="pt")["pixel_values"]
                                for path in files])
            labels = torch.tensor([int(path.parent.name == "virus") for path in files])
            from hfxray.families import ADAPTERS

            offered = "gradcam" in ADAPTERS[kind].explanations
            trained = gradcam_with_status(model, pixels) if offered else None
            cache[kind] = (pixels, labels, trained, None, model)
        return cache[kind]

    return get


@pytest.mark.parametrize("kind", KINDS)
def test_trained_models_get_a_map_for_nearly_every_test_image(explained, kind):
    pixels, labels, trained, _, model = explained(kind)
    assert len(pixels) == 92
    with torch.no_grad():
        accuracy = (model(pixel_values=pixels).logits.argmax(-1) == labels).float().mean().item()
    assert accuracy >= 0.7, f"{kind} is not a trained model (test accuracy {accuracy:.2f})"
    if trained is None:
        return  # ViT: Grad-CAM is not offered (it fails the positive control); its accuracy is checked above
    ok = np.mean([status == "ok" for status in trained.status])
    assert ok >= 0.95, f"{kind}: {100 * ok:.0f} % non-degenerate at {trained.layer}: {trained.status}"


@pytest.fixture(scope="module")
def sanity(real_runs, permuted_runs, tmp_path_factory):
    """kind -> what `hfxray explain --sanity --permuted-model` writes for the real run (its shown map, 16 test
    images): cascading and data randomisation from one call, as a user gets them."""
    from hfxray.explain.sanity_report import sanity_check
    from hfxray.families import ADAPTERS

    found = {}

    def get(kind: str) -> tuple[str, dict]:
        if kind not in found:
            method = ADAPTERS[kind].explanation  # the map the family shows (ViT: rollout; Grad-CAM is not offered)
            summary = sanity_check(real_runs(kind), tmp_path_factory.mktemp("sanity"), methods=[method],
                                   permuted_dir=permuted_runs(kind))
            assert len(summary["images"]) == 16
            found[kind] = method, summary["results"][method]
        return found[kind]

    return get


@pytest.mark.parametrize("kind", KINDS)
def test_cascading_randomisation_brings_the_maps_to_the_random_baseline(sanity, kind):
    """After every layer is re-initialised (top first), the maps are no closer to the trained ones than two random
    models' maps are to each other (mean |Spearman|)."""
    method, entry = sanity(kind)
    print(f"\n{kind}: " + ", ".join(f"{row['layer']} {row['spearman']:.2f}" for row in entry["steps"])
          + f"; random vs random {entry['baseline']['spearman']:.2f}")
    MEASURED["cascading"][kind] = dict(
        method=method, images=16,
        steps=[dict(layer=row["layer"], spearman=row["spearman"], ssim=row.get("ssim")) for row in entry["steps"]],
        baseline=entry["baseline"], passed=entry["cascading"]["passed"], verdict=entry["cascading"]["verdict"])
    if kind == "vit":
        # The tiny ViT's rollout fails the check, and the check must say so: it keeps 0.52 of its ranking after
        # every layer is re-initialised, against a 0.33 random-vs-random baseline (docs/explanations.md).
        assert not entry["cascading"]["passed"], entry["cascading"]["verdict"]
        return
    assert entry["cascading"]["passed"], entry["cascading"]["verdict"]
    assert entry["steps"][-1]["degenerate_maps"] <= 4, "randomised maps went blank: the check would pass by default"


@pytest.mark.parametrize("kind", KINDS)
def test_data_randomisation_against_a_model_trained_on_permuted_labels(sanity, kind):
    """The maps of a model trained the same way on labels shuffled between the classes, compared with the real
    model's on the same images, against the same random-vs-random baseline."""
    method, entry = sanity(kind)
    found = entry["data_randomisation"]
    print(f"\n{kind} {method}: permuted-label model |Spearman| {found['spearman']:.2f}, random vs random "
          f"{entry['baseline']['spearman']:.2f}: {found['verdict']}")
    MEASURED["data_randomisation"][kind] = dict(method=method, images=16, spearman=found["spearman"],
                                                ssim=found["ssim"], baseline=entry["baseline"],
                                                passed=found["passed"], verdict=found["verdict"])
    if DATA_RANDOMISATION[kind] == "at the bar":
        from hfxray.explain.sanity import VERDICT_MARGIN

        gap = found["spearman"] - entry["baseline"]["spearman"]
        assert abs(gap - VERDICT_MARGIN) <= AT_THE_BAR, found["verdict"]
    else:
        assert found["passed"] == (DATA_RANDOMISATION[kind] == "passes"), found["verdict"]


@pytest.mark.parametrize("kind", ["bit", "hybrid"])
def test_map_localisation_is_reported_against_the_uniform_map(explained, kind):
    """The body holds nearly all of each crop, so "most of the mass inside the body" is what a uniform map does too.
    The lifts are measured and printed (docs/explanations.md quotes them; on the small scratch BiT: body lift 0.999
    with the body 0.986 of the crop, border lift 1.01 on the 8 bordered images, from 0.46 to 1.67: these maps neither
    seek nor avoid the black frame, and say nothing about whether the model uses it). The uniform map's lift is 1
    over these real masks, which is what each reported lift is read against."""
    from hfxray.explain.localisation import body_mask, lift

    pixels, _, trained, _, _ = explained(kind)
    gray = ((pixels[:, 0] + 1) / 2).numpy()  # the processors scale to [-1, 1] (mean = std = 0.5)
    bodies = np.stack([body_mask(image) for image in gray])
    ok = np.array([status == "ok" for status in trained.status])
    border_share = 1 - bodies.mean(axis=(1, 2))
    bordered = ok & (border_share >= BORDERED)
    assert bordered.sum() >= 5, "too few test images with a dark border to measure"
    body_lift = [lift(heatmap, body) for heatmap, body in zip(trained.maps[ok], bodies[ok])]
    border_lift = [lift(heatmap, ~body) for heatmap, body in zip(trained.maps[bordered], bodies[bordered])]
    print(f"\n{kind}: body lift {np.mean(body_lift):.3f} (body {1 - border_share.mean():.3f} of the crop); on "
          f"{bordered.sum()} bordered images border lift {np.mean(border_lift):.2f} (range {np.min(border_lift):.2f}"
          f"-{np.max(border_lift):.2f}; border {border_share[bordered].mean():.2f} of the crop; uniform map: 1)")
    MEASURED["localisation"][kind] = dict(
        images=int(ok.sum()), body_lift=float(np.mean(body_lift)), body_area=float(1 - border_share.mean()),
        bordered_images=int(bordered.sum()), border_lift=float(np.mean(border_lift)),
        border_lift_range=[float(np.min(border_lift)), float(np.max(border_lift))],
        border_area=float(border_share[bordered].mean()))
    flat = np.ones_like(trained.maps[0])
    assert all(lift(flat, ~body) == pytest.approx(1.0) for body in bodies[bordered])
    assert all(np.isfinite(body_lift)) and all(np.isfinite(border_lift))


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_learns_clearly_better_than_chance(kind, real_runs):
    test = json.loads((real_runs(kind) / "test_results.json").read_text())
    print(f"{kind} scratch: accuracy {test['test_accuracy']:.3f}, AUROC {test['test_auroc']:.3f}")
    # Chance is 0.5 for both; the bars sit far below every measured run, so they check learning, not tuning.
    assert test["test_auroc"] >= 0.70 and test["test_accuracy"] >= 0.60
    low, _ = test["test_ci95"]["auroc"]
    assert low > 0.5, f"{kind}'s scratch run is at chance"
