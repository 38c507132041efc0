"""Grad-CAM for the three model kinds through pytorch-grad-cam.

The target layer is chosen per family (`hfxray.models.model_family`) because the last spatial feature map sits in
a different place in each: BiT's last stage, the hybrid's ResNet backbone (the feature map its ViT tokenises), and
for ViT the token sequence entering the last block, reshaped to the patch grid. pytorch-grad-cam computes the map
at that layer's resolution; hfxray upsamples it itself so that BiT's cells land where they are (`upsample.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..models import model_family
from .upsample import upsample_to_input


@dataclass(frozen=True)
class GradCamTarget:
    """Where Grad-CAM looks in a model, and how its cells map back to input pixels."""

    layer: nn.Module
    # Turns (B, tokens, C) into (B, C, h, w) given the input (height, width); None for conv feature maps.
    reshape: Callable[[torch.Tensor, int, int], torch.Tensor] | None = None
    # BiT pads every strided conv / pool by (k - 1) / 2, so cell i is centred on input pixel stride * i (both its
    # residual paths agree). ViT patches are centred exactly. The hybrid pads TF-"same": a dot probe put its stem
    # cells (tiny/small presets, stride 4) 1.5 px past their middle, and the R50's stride-16 cells (full preset)
    # 3 px past their top-left pixel along the residual shortcut but 15 px along the 3x3 path; the middle (7.5)
    # lies between, so the hybrid keeps the plain placement.
    top_left_anchored: bool = False


class LogitsOnly(nn.Module):
    """pytorch-grad-cam calls `model(x)` and expects a tensor; HF models take `pixel_values=` and return outputs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def gradcam_target(model: nn.Module) -> GradCamTarget:
    """The layer Grad-CAM explains in `model`, per family."""
    family = model_family(model)
    if family == "bit":
        # Pre-activation BiT ends with GroupNorm+ReLU after the last stage: explain that rectified map. The raw
        # stage output is a signed residual sum whose GroupNorm couples all positions, which inverts the map.
        norm = model.bit.norm
        return GradCamTarget(norm if not isinstance(norm, nn.Identity) else model.bit.encoder.stages[-1],
                             top_left_anchored=True)
    if family == "hybrid":
        backbone = model.timm_model.patch_embed.backbone
        # R50 backbones (full preset) have stages; the R-Ti stem of the tiny/small presets is conv-norm-pool only.
        return GradCamTarget(backbone.stages[-1] if hasattr(backbone, "stages") else backbone)
    patch = model.config.patch_size

    def drop_cls(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        grid = tokens[:, 1:, :]
        return grid.reshape(tokens.shape[0], height // patch, width // patch, -1).permute(0, 3, 1, 2)

    return GradCamTarget(model.vit.layers[-1].layernorm_before, drop_cls)


def _feature_resolution_gradcam():
    """pytorch-grad-cam's GradCAM, returning maps at the target layer's resolution (we upsample them ourselves)."""
    from pytorch_grad_cam import GradCAM

    class FeatureResolutionGradCAM(GradCAM):
        def get_target_width_height(self, input_tensor: torch.Tensor) -> None:
            return None  # scale_cam_image then only min-max normalises

    return FeatureResolutionGradCAM


def gradcam_map(model: nn.Module, pixel_values: torch.Tensor, target_class: int | list[int] | None = None
                ) -> np.ndarray:
    """Grad-CAM heatmaps in [0, 1] at input resolution, shape (B, H, W).

    `target_class` is the class whose logit is explained (one per image or one for all); None explains each
    image's predicted class.
    """
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    target = gradcam_target(model)
    height, width = pixel_values.shape[-2:]
    transform = (lambda tokens: target.reshape(tokens, height, width)) if target.reshape else None
    was_training = model.training
    model.eval()
    targets = None
    if target_class is not None:
        classes = [target_class] * len(pixel_values) if isinstance(target_class, int) else list(target_class)
        targets = [ClassifierOutputTarget(int(c)) for c in classes]
    try:
        with _feature_resolution_gradcam()(model=LogitsOnly(model), target_layers=[target.layer],
                                           reshape_transform=transform) as cam:
            cell_maps = cam(input_tensor=pixel_values, targets=targets)
    finally:
        model.zero_grad(set_to_none=True)  # Grad-CAM backpropagates into the weights; leave no stale gradients
        model.train(was_training)
    return upsample_to_input(cell_maps, (height, width), target.top_left_anchored)  # already in [0, 1]
