"""Randomisation sanity checks (Adebayo et al. 2018), each against a random-vs-random baseline.

- Cascading model randomisation: the model's layers are re-initialised from the output down, cumulatively (its
  family adapter names them: `FamilyAdapter.layers_top_down`), and after each step the maps are compared with the
  trained model's. Quantus's MPRT resets every module that has `reset_parameters`, in reverse `named_modules`
  order; hfxray resets the same way, a block at a time, so the curve has one point per block. Bare parameters
  (class token, position embeddings) are drawn from a truncated normal (std 0.02), as ViTs initialise them.
- Data randomisation: the maps of a model trained on permuted labels, compared with the real model's.

Similarity of two maps of one image: |Spearman| (the absolute rank correlation of their pixels; the mean over
images is of the absolute values, so a +0.3 and a -0.3 do not cancel) and SSIM (scikit-image's
`structural_similarity`, data range 1, as Quantus computes it). A constant map carries no ranking: its |Spearman|
is 0.

The baseline is the same comparison between two independent random re-initialisations of the same architecture
on the same images: what two unrelated models' maps share through the image and the architecture alone. A map
that explains the trained weights must, once those weights are gone, be no closer to the trained map than two
random models' maps are to each other (`VERDICT_MARGIN`), and the trained map must not be mostly the image
itself (`SHARED_BAR`): see `verdict`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..families import adapter_for

# A map of the trained weights counts as gone when the randomised model's maps are at most this much closer (mean
# |Spearman|) to the trained maps than two random models' maps are to each other: well above the spread of the
# random-vs-random mean over 16 images (its standard error was 0.02-0.05 on the tiny models; see
# docs/explanations.md), well below what a map that survives randomisation keeps (0.6-1.0).
VERDICT_MARGIN = 0.15
# When two random models' maps already agree this much (mean |Spearman|), the maps show the image rather than any
# weights, and no randomisation can tell more.
SHARED_BAR = 0.5
PARAMETER_STD = 0.02

ExplainFn = Callable[[nn.Module, torch.Tensor], np.ndarray]


def abs_spearman(a: np.ndarray, b: np.ndarray) -> float:
    """|Spearman| of two maps' pixels; 0 when either is constant (no ranking)."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(abs(spearmanr(a, b)[0]))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two maps in [0, 1] (scikit-image, data range 1)."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64),
                                       data_range=1.0))


@dataclass(frozen=True)
class Similarity:
    """Per-image similarities of two sets of maps, and their means."""

    spearman: np.ndarray
    ssim: np.ndarray

    @classmethod
    def of(cls, first: np.ndarray, second: np.ndarray) -> "Similarity":
        return cls(np.array([abs_spearman(a, b) for a, b in zip(first, second)]),
                   np.array([ssim(a, b) for a, b in zip(first, second)]))

    @property
    def mean_spearman(self) -> float:
        return float(self.spearman.mean())

    @property
    def mean_ssim(self) -> float:
        return float(self.ssim.mean())

    def spearman_se(self) -> float:
        """Standard error of the mean |Spearman| over the images."""
        return float(self.spearman.std(ddof=1) / np.sqrt(len(self.spearman))) if len(self.spearman) > 1 else 0.0


def reinitialise(items: Sequence, seed: int) -> None:
    """Re-draw the parameters of `items` (modules or bare parameters) in place: `reset_parameters` where a module
    has one (as Quantus's MPRT does), a truncated normal (std 0.02) for parameters no such module owns."""
    torch.manual_seed(seed)
    covered: set[int] = set()
    with torch.no_grad():
        for item in items:
            if not isinstance(item, nn.Module):
                continue
            for module in item.modules():
                if hasattr(module, "reset_parameters") and callable(module.reset_parameters):
                    module.reset_parameters()
                    covered.update(id(p) for p in module.parameters(recurse=False))
        for item in items:
            parameters = item.parameters() if isinstance(item, nn.Module) else [item]
            for parameter in parameters:
                if id(parameter) not in covered:
                    nn.init.trunc_normal_(parameter, std=PARAMETER_STD)
                    covered.add(id(parameter))


def randomised_copy(model: nn.Module, seed: int, steps: int | None = None) -> nn.Module:
    """A copy of `model` with its top `steps` layers (all when None) re-initialised from `seed`."""
    copied = copy.deepcopy(model).eval()
    layers = adapter_for(copied).layers_top_down(copied)
    for index, (_, items) in enumerate(layers[:steps]):
        reinitialise(items, seed * 1000 + index)
    return copied


@dataclass
class CascadeResult:
    """Similarity to the trained model's maps after each cumulative step, and the random-vs-random baseline."""

    steps: list[str]  # the layer re-initialised at each step, top first
    similarity: list[Similarity]  # after each step, to the trained maps
    baseline: Similarity  # two independent full re-initialisations, to each other
    degenerate: list[int] = field(default_factory=list)  # maps with no mass after each step

    @property
    def final(self) -> Similarity:
        return self.similarity[-1]


def cascading_randomisation(model: nn.Module, pixel_values: torch.Tensor, explain_fn: ExplainFn, seed: int = 0,
                            on_step: Callable[[str], None] | None = None) -> CascadeResult:
    """Re-initialise `model`'s layers top down, cumulatively, comparing `explain_fn`'s maps with the trained ones.

    `explain_fn(model, pixel_values)` returns (B, H, W) maps; it must explain the same thing for every model (for
    Grad-CAM: fixed classes, not each model's own prediction). The model itself is not changed.
    """
    model.eval()
    original = explain_fn(model, pixel_values)
    randomised = copy.deepcopy(model).eval()
    layers = adapter_for(randomised).layers_top_down(randomised)
    result = CascadeResult(steps=[], similarity=[], baseline=None)  # type: ignore[arg-type]
    for index, (name, items) in enumerate(layers):
        if on_step is not None:
            on_step(name)
        reinitialise(items, seed * 1000 + index)
        maps = explain_fn(randomised, pixel_values)
        result.steps.append(name)
        result.similarity.append(Similarity.of(original, maps))
        result.degenerate.append(int(sum(not heatmap.any() for heatmap in maps)))
    if on_step is not None:
        on_step("random-vs-random baseline")
    result.baseline = random_baseline(model, pixel_values, explain_fn, seed)
    return result


def random_baseline(model: nn.Module, pixel_values: torch.Tensor, explain_fn: ExplainFn, seed: int = 0
                    ) -> Similarity:
    """Similarity of the maps of two independent full re-initialisations of `model`'s architecture."""
    first = explain_fn(randomised_copy(model, seed + 1), pixel_values)
    second = explain_fn(randomised_copy(model, seed + 2), pixel_values)
    return Similarity.of(first, second)


def verdict(similarity: Similarity, baseline: Similarity, removed: str = "the weights that were removed",
            after: str = "randomisation") -> tuple[bool, str]:
    """(passed, one line): do the maps depend on what randomisation removed?

    Passed when the mean |Spearman| to the trained maps is at most the random-vs-random mean plus `VERDICT_MARGIN`,
    and the random-vs-random mean is below `SHARED_BAR` (otherwise the maps show the image, whatever the weights).
    `removed` and `after` name what was randomised, for the line (data randomisation: the labels, training on
    permuted labels).
    """
    if baseline.mean_spearman >= SHARED_BAR:
        return False, (f"two random models' maps agree (|Spearman| {baseline.mean_spearman:.2f} >= {SHARED_BAR}): "
                       "the maps show the image more than the weights")
    gap = similarity.mean_spearman - baseline.mean_spearman
    if gap > VERDICT_MARGIN:
        return False, (f"the maps keep {gap:+.2f} |Spearman| above the random baseline after {after}: they do not "
                       f"depend on {removed}")
    return True, f"{gap:+.2f} |Spearman| from the random baseline (bar: at most +{VERDICT_MARGIN})"
