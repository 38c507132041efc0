"""Grad-CAM for every model family through pytorch-grad-cam, explaining the decision rather than one logit.

What is explained: the predicted (or requested) class's **logit margin**, its logit minus the log-sum-exp of the
other logits, i.e. the log-odds softmax gives it (for the binary head: logit(class) - logit(other)), the quantity
that decides the prediction and is positive whenever the class is predicted. A single class logit is not: behind
a linear head over pooled non-negative features its map sums to that logit minus its bias, so a predicted class
whose own logit is negative (only less negative than the other) has no positive cell. On the models trained on
the real sample the margin and the logit gave the same empty maps, though: what emptied them was the layer.

Where: each family's adapter names a layer whose activations are signed, so that evidence for a class can show
as positive cells (`hfxray/families/<family>.py`, with the measurements behind each choice; e.g. BiT's last stage
output, the tokens entering ViT's second-to-last block with the class token dropped).
pytorch-grad-cam computes the map at that layer's resolution; hfxray keeps its signed sum, judges it (`judge`)
and upsamples it itself so that BiT's cells land where they are (`upsample.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..families import adapter_for
from .upsample import upsample_to_input

QUANTITY = "logit margin"  # what every Grad-CAM map here explains; figures and summaries name it
# A map is degenerate when its positive part is below this share of its largest magnitude (nothing to show once
# negatives are clipped) or when all its cells are equal to this precision (min-max would blow up rounding noise).
DEGENERATE_TOLERANCE = 1e-4
STATUS_TEXT = {
    "ok": "",
    "empty": "no positive evidence at this layer: the map is all zero",
    "constant": "every cell is equal: the map locates nothing",
    "no-gradient": "the prediction does not change with the image here (zero gradient: e.g. every feature "
                   "feeding the head is zero, so the head's bias decides)",
}


@dataclass(frozen=True)
class GradCamTarget:
    """Where Grad-CAM looks in a model, and how its cells map back to input pixels."""

    layer: nn.Module
    # Turns (B, tokens, C) into (B, C, h, w) given the input (height, width); None for conv feature maps.
    reshape: Callable[[torch.Tensor, int, int], torch.Tensor] | None = None
    top_left_anchored: bool = False  # see hfxray.families.GradCamLayer
    # Module path of `layer` inside the model, for figures, summaries and the README.
    name: str = ""


@dataclass(frozen=True)
class GradCamResult:
    """Maps in [0, 1] at input resolution (B, H, W), the class each explains, and whether each shows anything.

    `status[i]` is "ok", "empty" (no positive cell: the map is all zero), "constant" (all cells equal) or
    "no-gradient" (the class's margin has zero gradient at the layer: nothing in the image moves the prediction).
    `positive_share[i]` is the positive part's share of the signed map's total magnitude (1 = no negative cell):
    a small value flags a map carried by a few cells.
    """

    maps: np.ndarray
    classes: list[int]
    status: list[str]
    positive_share: list[float]
    layer: str
    quantity: str = QUANTITY

    @property
    def degenerate(self) -> list[bool]:
        return [status != "ok" for status in self.status]


class LogitsOnly(nn.Module):
    """pytorch-grad-cam calls `model(x)` and expects a tensor; HF models take `pixel_values=` and return outputs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


class LogitMargin:
    """pytorch-grad-cam target: a class's logit minus the log-sum-exp of the others (its softmax log-odds).

    `category=None` takes the image's predicted class, so one forward pass serves prediction and explanation.
    """

    def __init__(self, category: int | None = None) -> None:
        self.category = category
        self.chosen: int | None = category

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        logits = model_output if model_output.ndim == 1 else model_output[0]
        category = int(logits.argmax()) if self.category is None else self.category
        self.chosen = category
        others = torch.cat([logits[:category], logits[category + 1:]])
        return logits[category] - torch.logsumexp(others, dim=0)


def _token_grid_reshape(num_prefix_tokens: int, patch: int | None = None):
    """(B, tokens, C) -> (B, C, h, w): drop the prefix (class) tokens and fold the rest onto the patch grid."""

    def reshape(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        grid = tokens[:, num_prefix_tokens:, :]
        if patch is not None:
            rows, cols = height // patch, width // patch
        else:  # the hybrid's stride depends on its backbone: take the grid from the token count and aspect ratio
            from .rollout import _token_grid

            rows, cols = _token_grid(grid.shape[1], (height, width))
        return grid.reshape(tokens.shape[0], rows, cols, -1).permute(0, 3, 1, 2)

    return reshape


def gradcam_target(model: nn.Module) -> GradCamTarget:
    """The layer Grad-CAM explains in `model`, as its family's adapter names it."""
    layer = adapter_for(model).gradcam_layer(model)
    reshape = (None if layer.num_prefix_tokens is None
               else _token_grid_reshape(layer.num_prefix_tokens, layer.patch))
    return GradCamTarget(layer.module, reshape, layer.top_left_anchored, layer.name)


def _signed_gradcam():
    """pytorch-grad-cam's GradCAM, keeping each map's signed sum at the target layer's resolution.

    pytorch-grad-cam clips at zero and min-max normalises, after which an all-zero map and an all-equal one look
    alike and both draw as a blank; hfxray judges and upsamples the signed map itself.
    """
    from pytorch_grad_cam import GradCAM

    class SignedGradCAM(GradCAM):
        signed: np.ndarray | None = None
        has_gradient: np.ndarray | None = None

        def get_cam_image(self, input_tensor, target_layer, targets, activations, grads, eigen_smooth=False):
            cam = super().get_cam_image(input_tensor, target_layer, targets, activations, grads, eigen_smooth)
            self.signed = np.asarray(cam, dtype=np.float64)
            self.has_gradient = np.abs(np.asarray(grads)).reshape(len(cam), -1).max(axis=1) > 0
            return cam

        def get_target_width_height(self, input_tensor: torch.Tensor) -> None:
            return None  # scale_cam_image then only min-max normalises; nothing is resized twice

    return SignedGradCAM


def judge(signed: np.ndarray, has_gradient: bool = True) -> tuple[str, float]:
    """("ok" | "empty" | "constant" | "no-gradient", positive share) of one signed cell map."""
    signed = np.asarray(signed, dtype=np.float64)
    if not has_gradient:
        return "no-gradient", 0.0
    if not np.isfinite(signed).all():
        return "empty", 0.0
    magnitude = float(np.abs(signed).max())
    positive = np.maximum(signed, 0)
    if magnitude == 0 or positive.max() <= DEGENERATE_TOLERANCE * magnitude:
        return "empty", 0.0
    share = float(positive.sum() / np.abs(signed).sum())
    if np.ptp(positive) <= DEGENERATE_TOLERANCE * positive.max():
        return "constant", share
    return "ok", share


def gradcam_with_status(model: nn.Module, pixel_values: torch.Tensor, target_class: int | Sequence[int] | None = None,
                        target: GradCamTarget | None = None) -> GradCamResult:
    """Grad-CAM of each image's predicted class (or `target_class`: one index for all, or one per image).

    Explains the class's logit margin (`QUANTITY`) at `gradcam_target(model)` (or at `target`, for checks that
    need another layer); degenerate maps are returned as zeros with their status, never silently stretched.
    """
    target = target or gradcam_target(model)
    height, width = pixel_values.shape[-2:]
    transform = (lambda tokens: target.reshape(tokens, height, width)) if target.reshape else None
    if target_class is None:
        targets = [LogitMargin() for _ in range(len(pixel_values))]
    else:
        classes = [target_class] * len(pixel_values) if isinstance(target_class, int) else list(target_class)
        targets = [LogitMargin(int(c)) for c in classes]
    was_training = model.training
    model.eval()
    try:
        with _signed_gradcam()(model=LogitsOnly(model), target_layers=[target.layer],
                               reshape_transform=transform) as cam:
            cam(input_tensor=pixel_values, targets=targets)
            signed, has_gradient = cam.signed, cam.has_gradient
    finally:
        model.zero_grad(set_to_none=True)  # Grad-CAM backpropagates into the weights; leave no stale gradients
        model.train(was_training)
    verdicts = [judge(cell_map, bool(flowing)) for cell_map, flowing in zip(signed, has_gradient)]
    status = [verdict for verdict, _ in verdicts]
    positive = np.maximum(signed, 0)
    positive[[verdict != "ok" for verdict in status]] = 0.0  # a degenerate map draws as zeros, flagged by status
    maps = upsample_to_input(positive, (height, width), target.top_left_anchored)
    return GradCamResult(maps=maps, classes=[int(t.chosen) for t in targets], status=status,
                         positive_share=[share for _, share in verdicts], layer=target.name)


def gradcam_map(model: nn.Module, pixel_values: torch.Tensor, target_class: int | Sequence[int] | None = None,
                target: GradCamTarget | None = None) -> np.ndarray:
    """Grad-CAM heatmaps in [0, 1] at input resolution, shape (B, H, W) (see `gradcam_with_status` for status and classes)."""
    return gradcam_with_status(model, pixel_values, target_class, target).maps
