"""Grad-CAM for the three model kinds through pytorch-grad-cam.

The target layer is chosen per family (`hfxray.models.model_family`) because the last spatial feature map sits in
a different place in each: BiT's last stage, the hybrid's ResNet backbone (the feature map its ViT tokenises), and
for ViT the token sequence entering the last block, reshaped to the patch grid.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from ..models import model_family


class LogitsOnly(nn.Module):
    """pytorch-grad-cam calls `model(x)` and expects a tensor; HF models take `pixel_values=` and return outputs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def gradcam_target(model: nn.Module) -> tuple[nn.Module, Callable | None]:
    """(target layer, reshape_transform) for `model`; the transform turns tokens into a (B, C, h, w) map."""
    family = model_family(model)
    if family == "bit":
        # Pre-activation BiT ends with GroupNorm+ReLU after the last stage: explain that rectified map. The raw
        # stage output is a signed residual sum whose GroupNorm couples all positions, which inverts the map.
        norm = model.bit.norm
        return (norm if not isinstance(norm, nn.Identity) else model.bit.encoder.stages[-1]), None
    if family == "hybrid":
        backbone = model.timm_model.patch_embed.backbone
        # R50 backbones (full preset) have stages; the R-Ti stem of the tiny/small presets is conv-norm-pool only.
        return (backbone.stages[-1] if hasattr(backbone, "stages") else backbone), None
    patch = model.config.patch_size

    def drop_cls(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        grid = tokens[:, 1:, :]
        return grid.reshape(tokens.shape[0], height // patch, width // patch, -1).permute(0, 3, 1, 2)

    return model.vit.layers[-1].layernorm_before, drop_cls


def gradcam_map(model: nn.Module, pixel_values: torch.Tensor, target_class: int | list[int] | None = None
                ) -> np.ndarray:
    """Grad-CAM heatmaps in [0, 1] at input resolution, shape (B, H, W).

    `target_class` is the class whose logit is explained (one per image or one for all); None explains each
    image's predicted class.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer, reshape = gradcam_target(model)
    height, width = pixel_values.shape[-2:]
    transform = (lambda tokens: reshape(tokens, height, width)) if reshape else None
    was_training = model.training
    model.eval()
    targets = None
    if target_class is not None:
        classes = [target_class] * len(pixel_values) if isinstance(target_class, int) else list(target_class)
        targets = [ClassifierOutputTarget(int(c)) for c in classes]
    try:
        with GradCAM(model=LogitsOnly(model), target_layers=[layer], reshape_transform=transform) as cam:
            heatmaps = cam(input_tensor=pixel_values, targets=targets)
    finally:
        model.zero_grad(set_to_none=True)  # Grad-CAM backpropagates into the weights; leave no stale gradients
        model.train(was_training)
    return np.clip(heatmaps, 0.0, 1.0)
