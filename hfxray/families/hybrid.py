"""The R50+ViT hybrid (Dosovitskiy et al. 2021): a timm ResNetV2 stem feeding a ViT, through transformers'
`TimmWrapperForImageClassification`."""

from __future__ import annotations

from ._base import BuildRequest, FamilyAdapter, GradCamLayer

# timm's R-Ti/16 hybrid: a ResNetV2 stem feeding a ViT, the smallest member of the R50+ViT-B/16 family (the R26/R50
# backbones cannot be shrunk through create_model arguments).
RANDOM_ARCHITECTURE = "vit_tiny_r_s16_p8_224"
SIZES = {"tiny": dict(embed_dim=32, depth=2, num_heads=2), "small": dict(embed_dim=128, depth=4, num_heads=4)}


def _pretrained(request: BuildRequest):
    from transformers import AutoModelForImageClassification

    # The in21k hybrid ships no head: ignore_mismatched_sizes lets a fresh 2-class head be created.
    model = request.from_pretrained(AutoModelForImageClassification.from_pretrained, request.source,
                                    **request.labels, ignore_mismatched_sizes=True)
    if request.image_size != model.timm_model.patch_embed.img_size[0]:
        # timm resamples the position embeddings; model_args makes a reload build the same shapes.
        model.timm_model.set_input_size(img_size=request.image_size)
        model.config.model_args = {**(model.config.model_args or {}), "img_size": request.image_size}
    return model


def _random(request: BuildRequest):
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    # Overrides are timm create_model arguments (embed_dim, depth, num_heads, mlp_ratio, ...), kept in model_args.
    return request.from_scratch(TimmWrapperForImageClassification, TimmWrapperConfig, dict(
        architecture=RANDOM_ARCHITECTURE,
        model_args=dict(img_size=request.image_size, **SIZES[request.preset]) | request.overrides,
        **request.labels))


# The tokens entering its last transformer block (measured on models trained on the real sample): the small
# presets' ResNet is a one-convolution stem whose rectified features gave an empty map for every "virus"
# prediction of a trained tiny hybrid.
def _gradcam_layer(model) -> GradCamLayer:
    timm_model = model.timm_model
    return GradCamLayer(timm_model.blocks[-1].norm1, "timm_model.blocks[-1].norm1",
                        num_prefix_tokens=timm_model.num_prefix_tokens)


def _blocks(model):
    timm_model = model.timm_model
    if not hasattr(timm_model, "blocks") or not len(timm_model.blocks) or not hasattr(timm_model.blocks[0], "attn"):
        return None
    return timm_model.blocks


def _layers_top_down(model) -> list:
    from torch import nn

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


ADAPTER = FamilyAdapter(
    name="hybrid",
    order=2,
    model_types=("timm_wrapper",),
    display_name="R50+ViT hybrid",
    card_text="A ResNet+ViT hybrid (Dosovitskiy et al. 2021: a ResNetV2 stem feeding a Vision Transformer; timm "
              "through transformers' `TimmWrapperForImageClassification`).",
    card_tags=("timm", "vit", "resnetv2", "hybrid"),
    pretrained={"hybrid": "timm/vit_base_r50_s16_224.orig_in21k"},
    random_presets=SIZES,
    load_pretrained=_pretrained,
    build_random=_random,
    override_example="'embed_dim=192' (timm create_model arguments)",
    default_recipe="seed",
    recipe_family="vit",  # fine-tuned as ViT is (the study and ViT's paper did so)
    head=lambda model: model.timm_model.get_classifier(),
    gradcam_layer=_gradcam_layer,
    layers_top_down=_layers_top_down,
    # Grad-CAM first: it reaches the backbone's features, which rollout over the tokens does not.
    explanations=("gradcam", "rollout", "actmax"),
    attention="timm",
    attention_blocks=_blocks,
)
