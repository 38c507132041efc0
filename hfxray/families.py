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
class GradCamLayer:
    """The layer Grad-CAM weighs in a model, and how its cells map back to input pixels (hfxray/explain)."""

    module: nn.Module
    name: str  # module path inside the model, for figures, summaries and the README
    # A token sequence (B, tokens, C): drop this many prefix (class) tokens and fold the rest onto the patch grid.
    # None: the layer already gives a (B, C, h, w) feature map.
    num_prefix_tokens: int | None = None
    patch: int | None = None  # patch size of the token grid; None: the grid follows from the token count
    # BiT pads every strided conv / pool by (k - 1) / 2, so cell i is centred on input pixel stride * i (both its
    # residual paths agree). ViT patches are centred exactly; so are the hybrid's tokens.
    top_left_anchored: bool = False


@dataclass(frozen=True)
class FamilyAdapter:
    """What is family-specific about a loaded model, as small functions of the model and plain data."""

    name: str  # "vit" | "bit" | "hybrid"
    model_types: tuple[str, ...]  # config.model_type values of this family
    head: Callable[[nn.Module], nn.Module]  # the final Linear layer, whose output is the logits
    gradcam_layer: Callable[[nn.Module], GradCamLayer]
    # How attention probabilities are read for rollout: "transformers" (output_attentions, eager attention),
    # "timm" (hooks on the blocks' attention dropout), or None (no attention).
    attention: str | None
    attention_blocks: Callable[[nn.Module], object] | None  # the blocks rollout reads, None when there are none
    # The model's layers from the output to the input, for cascading randomisation (hfxray/explain/sanity.py):
    # (name, [modules or bare parameters]) per step; together they hold every parameter of the model.
    layers_top_down: Callable[[nn.Module], list[tuple[str, list]]]

    def checked_head(self, model: nn.Module) -> nn.Linear:
        head = self.head(model)
        if not isinstance(head, nn.Linear):
            raise UnsupportedModelError(f"the {self.name} model's head is {type(head).__name__}, not a Linear "
                                        "layer. To fix: use a model trained by hfxray")
        return head


# Why these layers (measured on models trained on the real sample; hfxray/explain/gradcam.py says what the maps
# explain): a layer with signed activations, so that evidence for a class shows as positive cells.
# - BiT: the last stage's output, before the final GroupNorm+ReLU. In a model whose final channels are mostly dead
#   (the seed recipe's Adam at lr 0.1 left 3 of tiny BiT's 64 alive) the rectified map after the norm had no
#   positive cell for 63 of 92 "virus" test maps; at the stage output 17, all with zero gradient.
# - hybrid: the tokens entering its last transformer block. The small presets' ResNet is a one-convolution stem
#   whose rectified features gave an empty map for every "virus" prediction of a trained tiny hybrid.
# - ViT: the tokens entering the second-to-last block. At the last block's input a patch reaches the head through
#   one attention row of the class token only: 6 of 92 maps of the small seed-recipe ViT were empty there, and
#   the tiny one's maps correlated 0.50 with re-initialised weights; one block earlier 0 and -0.24.
def _bit_gradcam_layer(model: nn.Module) -> GradCamLayer:
    return GradCamLayer(model.bit.encoder.stages[-1], "bit.encoder.stages[-1]", top_left_anchored=True)


def _hybrid_gradcam_layer(model: nn.Module) -> GradCamLayer:
    timm_model = model.timm_model
    return GradCamLayer(timm_model.blocks[-1].norm1, "timm_model.blocks[-1].norm1",
                        num_prefix_tokens=timm_model.num_prefix_tokens)


def _vit_gradcam_layer(model: nn.Module) -> GradCamLayer:
    layers = model.vit.layers
    index = -2 if len(layers) > 1 else -1
    return GradCamLayer(layers[index].layernorm_before, f"vit.layers[{index}].layernorm_before",
                        num_prefix_tokens=1, patch=model.config.patch_size)


def _vit_layers(model: nn.Module) -> list[tuple[str, list]]:
    layers = model.vit.layers
    return [("classifier", [model.classifier]), ("vit.layernorm", [model.vit.layernorm]),
            *[(f"vit.layers[{index}]", [layers[index]]) for index in reversed(range(len(layers)))],
            ("vit.embeddings", [model.vit.embeddings])]


def _bit_layers(model: nn.Module) -> list[tuple[str, list]]:
    stages = model.bit.encoder.stages
    return [("classifier", [model.classifier]), ("bit.norm", [model.bit.norm]),
            *[(f"bit.encoder.stages[{index}]", [stages[index]]) for index in reversed(range(len(stages)))],
            ("bit.embedder", [model.bit.embedder])]


def _hybrid_layers(model: nn.Module) -> list[tuple[str, list]]:
    timm_model = model.timm_model
    blocks = getattr(timm_model, "blocks", None) or []
    # Named by their place in the model; the embedding step also takes the bare class token and position
    # embeddings, which belong to no sub-module.
    embedding = [getattr(timm_model, name) for name in ("patch_embed", "cls_token", "pos_embed", "reg_token")
                 if getattr(timm_model, name, None) is not None]
    heads = [timm_model.get_classifier()]
    norms = [module for module in (getattr(timm_model, "norm", None), getattr(timm_model, "fc_norm", None))
             if module is not None and any(True for _ in module.parameters())]
    covered = {id(p) for group in (heads, norms, list(blocks), embedding) for item in group
               for p in (item.parameters() if isinstance(item, nn.Module) else [item])}
    rest = [p for p in timm_model.parameters() if id(p) not in covered]  # e.g. an attention-pool head
    return [("timm_model.head", heads + rest), ("timm_model.norm", norms),
            *[(f"timm_model.blocks[{index}]", [blocks[index]]) for index in reversed(range(len(blocks)))],
            ("timm_model.patch_embed", embedding)]


def _hybrid_blocks(model: nn.Module):
    timm_model = model.timm_model
    if not hasattr(timm_model, "blocks") or not len(timm_model.blocks) or not hasattr(timm_model.blocks[0], "attn"):
        return None
    return timm_model.blocks


ADAPTERS = {
    adapter.name: adapter for adapter in (
        FamilyAdapter("vit", ("vit",), head=lambda m: m.classifier, gradcam_layer=_vit_gradcam_layer,
                      attention="transformers", attention_blocks=lambda m: m.vit.layers,
                      layers_top_down=_vit_layers),
        FamilyAdapter("bit", ("bit",), head=lambda m: m.classifier[-1],  # Sequential(Flatten, Linear)
                      gradcam_layer=_bit_gradcam_layer, attention=None, attention_blocks=None,
                      layers_top_down=_bit_layers),
        FamilyAdapter("hybrid", ("timm_wrapper",), head=lambda m: m.timm_model.get_classifier(),
                      gradcam_layer=_hybrid_gradcam_layer, attention="timm", attention_blocks=_hybrid_blocks,
                      layers_top_down=_hybrid_layers),
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
