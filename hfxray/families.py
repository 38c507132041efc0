"""One adapter per model family: where a loaded model keeps what prediction, calibration and explanation need.

A family is a model class whose modules sit in the same places (timm's `pretrained_cfg` idea: what differs per
family is data, not `if family == ...` across modules). Adding a fourth family means adding one adapter here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from .errors import HfxrayError


class UnsupportedModelError(HfxrayError, ValueError):
    """The model is not of a family hfxray knows."""


@dataclass(frozen=True)
class FamilyAdapter:
    """What is family-specific about a loaded model, as small functions of the model."""

    name: str  # "vit" | "bit" | "hybrid"
    model_types: tuple[str, ...]  # config.model_type values of this family
    head: Callable[[nn.Module], nn.Module]  # the final Linear layer, whose output is the logits
    # The layer whose activations Grad-CAM weighs, and the block sequence attention rollout reads (None: no
    # attention); see hfxray/explain.
    gradcam_layer: Callable[[nn.Module], nn.Module]
    attention_blocks: Callable[[nn.Module], object] | None

    def checked_head(self, model: nn.Module) -> nn.Linear:
        head = self.head(model)
        if not isinstance(head, nn.Linear):
            raise UnsupportedModelError(f"the {self.name} model's head is {type(head).__name__}, not a Linear "
                                        "layer. To fix: use a model trained by hfxray")
        return head


def _hybrid_backbone(model: nn.Module) -> nn.Module:
    backbone = model.timm_model.patch_embed.backbone
    # R50 backbones (full preset) have stages; the R-Ti stem of the tiny/small presets is conv-norm-pool only.
    return backbone.stages[-1] if hasattr(backbone, "stages") else backbone


def _bit_gradcam_layer(model: nn.Module) -> nn.Module:
    norm = model.bit.norm
    return norm if not isinstance(norm, nn.Identity) else model.bit.encoder.stages[-1]


def _hybrid_blocks(model: nn.Module):
    timm_model = model.timm_model
    if not hasattr(timm_model, "blocks") or not len(timm_model.blocks) or not hasattr(timm_model.blocks[0], "attn"):
        return None
    return timm_model.blocks


ADAPTERS = {
    adapter.name: adapter for adapter in (
        FamilyAdapter("vit", ("vit",), head=lambda m: m.classifier,
                      gradcam_layer=lambda m: m.vit.layers[-1].layernorm_before,
                      attention_blocks=lambda m: m.vit.layers),
        FamilyAdapter("bit", ("bit",), head=lambda m: m.classifier[-1],  # Sequential(Flatten, Linear)
                      gradcam_layer=_bit_gradcam_layer, attention_blocks=None),
        FamilyAdapter("hybrid", ("timm_wrapper",), head=lambda m: m.timm_model.get_classifier(),
                      gradcam_layer=_hybrid_backbone, attention_blocks=_hybrid_blocks),
    )
}


def adapter_for(model_or_config) -> FamilyAdapter:
    """The adapter of a loaded model (or its config), from `config.model_type`."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", "")
    for adapter in ADAPTERS.values():
        if model_type in adapter.model_types:
            return adapter
    raise UnsupportedModelError(f"unsupported model type {model_type!r}: hfxray handles ViT, BiT and timm hybrid "
                                "models. To fix: use a model trained by hfxray")


def model_family(model_or_config) -> str:
    """"vit", "bit" or "hybrid" for a loaded model."""
    return adapter_for(model_or_config).name
