"""What a family adapter is: the data and small functions that differ between model families.

Kept free of torch and transformers at import time (the CLI lists the families for `--help` without them); the
adapters import their model classes inside their functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from ..errors import HfxrayError

if TYPE_CHECKING:
    from torch import nn

METHODS = ("gradcam", "rollout", "actmax")  # every explanation hfxray has (hfxray/explain)


class UnsupportedModelError(HfxrayError, ValueError):
    """The model is not of a family hfxray knows."""


@dataclass(frozen=True)
class GradCamLayer:
    """The layer Grad-CAM weighs in a model, and how its cells map back to input pixels (hfxray/explain)."""

    module: "nn.Module"
    name: str  # module path inside the model, for figures, summaries and the README
    # A token sequence (B, tokens, C): drop this many prefix (class) tokens and fold the rest onto the patch grid.
    # None: the layer already gives a (B, C, h, w) feature map.
    num_prefix_tokens: int | None = None
    patch: int | None = None  # patch size of the token grid; None: the grid follows from the token count
    # True when cell i is centred on input pixel stride * i (convolutions padded by (k - 1) / 2, as BiT's), False
    # when cells tile the input exactly (ViT patches, the hybrid's tokens, ConvNeXt's unpadded patchify stem).
    top_left_anchored: bool = False


def stacked_layers(top: list[tuple[str, object]], name: str, blocks, stem: tuple[str, object]) -> list:
    """`layers_top_down` of a model that is a stem, a stack of blocks and a head: `top` (head, final norm) as
    (name, module) pairs, then the blocks of `blocks` (called `name[i]`) from the last, then the stem."""
    return [(label, [module]) for label, module in top] + \
        [(f"{name}[{index}]", [blocks[index]]) for index in reversed(range(len(blocks)))] + [(stem[0], [stem[1]])]


@dataclass(frozen=True)
class BuildRequest:
    """What `hfxray.models.create_model` asks an adapter to build, with the loading helpers it lends it.

    The helpers come from `hfxray.models` (safe loading: no remote code, safetensors only, one-line errors), so
    that the families package needs nothing from the modules that use it.
    """

    name: str  # the --model value (a family's own name, or one of its pretrained-only variants)
    preset: str  # full | small | tiny
    image_size: int
    checkpoint: str | None  # --checkpoint as given (a folder or Hub id), None for the registry's
    hub_id: str | None  # the registry's Hub id of the `full` preset, else None
    overrides: dict  # --config_overrides, parsed
    labels: dict  # num_labels, id2label, label2id of hfxray's two classes
    from_pretrained: Callable[..., "nn.Module"]  # (loader, checkpoint, **kwargs)
    from_scratch: Callable[[type, type, dict], "nn.Module"]  # (model class, config class, config values)
    check_config_keys: Callable[[type, Sequence[str]], None]  # (config class, the preset's own fields)

    @property
    def source(self) -> str | None:
        """What a pretrained build loads: --checkpoint, else the registry's Hub id."""
        return self.checkpoint or self.hub_id


@dataclass(frozen=True)
class FamilyAdapter:
    """Everything hfxray knows about one model family, as plain data and small functions of a model.

    One module per family in `hfxray/families/` defines one `ADAPTER`; `hfxray.families` discovers them.
    """

    name: str  # the --model value of the family's own models
    order: int  # where the family is listed in help texts, the demo and cards (the study's three first)
    model_types: tuple[str, ...]  # config.model_type values of this family's saved models
    display_name: str  # as readers know it, e.g. "ViT"
    card_text: str  # the model card's sentence on the architecture
    card_tags: tuple[str, ...]  # Hub tags of the model card
    # --model name -> Hub id of its pretrained weights (`--preset full`): the family's own name, and any
    # pretrained-only variants (BiT's `bit_in1k`), which have no random-init presets.
    pretrained: Mapping[str, str]
    random_presets: Mapping[str, Mapping]  # preset -> the architecture of a randomly initialised model
    load_pretrained: Callable[[BuildRequest], "nn.Module"]
    build_random: Callable[[BuildRequest], "nn.Module"]  # for request.preset, a key of random_presets
    override_example: str  # a --config_overrides example for --help
    default_recipe: str  # --recipe when none is given
    head: Callable[["nn.Module"], "nn.Module"]  # the final Linear layer, whose output is the logits
    gradcam_layer: Callable[["nn.Module"], GradCamLayer]
    # Explanation methods that apply (of METHODS); the first is the one pages, the demo and summaries show.
    explanations: tuple[str, ...]
    # How attention probabilities are read for rollout: "transformers" (output_attentions, eager attention),
    # "timm" (hooks on the blocks' attention dropout), or None (no attention).
    attention: str | None = None
    attention_blocks: Callable[["nn.Module"], object] | None = None  # the blocks rollout reads, None if none
    # The model's layers from the output to the input, for cascading randomisation (hfxray/explain/sanity.py):
    # (name, [modules or bare parameters]) per step; together they hold every parameter of the model.
    layers_top_down: Callable[["nn.Module"], list] | None = None
    # Prefix of configs/recipes/<recipe_family>-<recipe>.yaml; None: the family's name (the hybrid shares ViT's).
    recipe_family: str | None = None
    # Processor mean/std; empty: scale to [-1, 1], as ViT-21k, BiT-M and the hybrid's weights were trained.
    normalisation: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    # Methods of METHODS that would run on the family but are not offered, each with the reason the refusal gives
    # (e.g. a map that fails the planted-marker positive control, tests/test_explain_control.py).
    not_offered: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.explanations) - set(METHODS)
        if unknown or not self.explanations:
            raise ValueError(f"family {self.name}: explanations {self.explanations} must be some of {METHODS}")
        if set(self.not_offered) - set(METHODS) or set(self.not_offered) & set(self.explanations):
            raise ValueError(f"family {self.name}: not_offered {sorted(self.not_offered)} must be methods of "
                             f"{METHODS} outside its explanations")
        if ("rollout" in self.explanations) != (self.attention is not None):
            raise ValueError(f"family {self.name}: rollout applies exactly when the family has attention")
        if self.layers_top_down is None:
            raise ValueError(f"family {self.name}: `layers_top_down` must list its layers for randomisation checks")
        if self.name not in self.pretrained:
            raise ValueError(f"family {self.name}: `pretrained` must name the family's own pretrained weights")

    @property
    def model_names(self) -> tuple[str, ...]:
        """Every --model value this family serves, its own name first."""
        return (self.name, *(name for name in self.pretrained if name != self.name))

    @property
    def explanation(self) -> str:
        """The explanation shown when one is shown per model."""
        return self.explanations[0]

    @property
    def recipes_prefix(self) -> str:
        return self.recipe_family or self.name

    def checked_head(self, model: "nn.Module") -> "nn.Linear":
        from torch import nn

        head = self.head(model)
        if not isinstance(head, nn.Linear):
            raise UnsupportedModelError(f"the {self.name} model's head is {type(head).__name__}, not a Linear "
                                        "layer. To fix: use a model trained by hfxray")
        return head
