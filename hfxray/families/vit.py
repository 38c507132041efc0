"""ViT (Dosovitskiy et al. 2021): transformers' `ViTForImageClassification`."""

from __future__ import annotations

from ._base import BuildRequest, FamilyAdapter, GradCamLayer, stacked_layers

SIZES = {"tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
         "small": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256)}


def _pretrained(request: BuildRequest):
    from transformers import ViTForImageClassification

    model = request.from_pretrained(ViTForImageClassification.from_pretrained, request.source, **request.labels)
    if model.config.image_size != request.image_size:
        resize_vit_position_embeddings(model, request.image_size)
    return model


def _random(request: BuildRequest):
    from transformers import ViTConfig, ViTForImageClassification

    sizes = SIZES[request.preset]
    request.check_config_keys(ViTConfig, list(sizes))
    return request.from_scratch(ViTForImageClassification, ViTConfig,
                                dict(image_size=request.image_size, patch_size=16, **sizes, **request.labels)
                                | request.overrides)


def resize_vit_position_embeddings(model, image_size: int) -> None:
    """Resample a ViT's learned position embeddings to a new input size (the study fine-tuned at 128 px).

    Done once on the weights (as timm does when loading at another size) so that the saved model natively
    takes `image_size` inputs and `pipeline` needs no `interpolate_pos_encoding` flag.
    """
    import torch
    from timm.layers import resample_abs_pos_embed

    embeddings = model.vit.embeddings
    patch = model.config.patch_size
    old_grid = model.config.image_size // patch
    new_grid = image_size // patch
    with torch.no_grad():
        resampled = resample_abs_pos_embed(embeddings.position_embeddings.data, new_size=(new_grid, new_grid),
                                           old_size=(old_grid, old_grid), num_prefix_tokens=1)
    embeddings.position_embeddings = torch.nn.Parameter(resampled)
    embeddings.patch_embeddings.image_size = (image_size, image_size)
    embeddings.patch_embeddings.num_patches = new_grid * new_grid
    # transformers 5.24 checks the input size in ViTEmbeddings against its own copy of image_size (earlier
    # releases checked it in the patch embeddings): both must name the new size.
    if hasattr(embeddings, "image_size"):
        embeddings.image_size = (image_size, image_size)
    model.config.image_size = image_size


# Grad-CAM is not offered for ViT (`not_offered` below); the layer stays so that the positive control keeps
# measuring it. The tokens entering the second-to-last block (measured on models trained on the real sample): at
# the last block's input a patch reaches the head through one attention row of the class token only; 6 of 92 maps
# of the small seed-recipe ViT were empty there, and the tiny one's maps correlated 0.50 with re-initialised
# weights; one block earlier 0 and -0.24.
def _gradcam_layer(model) -> GradCamLayer:
    layers = model.vit.layers
    index = -2 if len(layers) > 1 else -1
    return GradCamLayer(layers[index].layernorm_before, f"vit.layers[{index}].layernorm_before",
                        num_prefix_tokens=1, patch=model.config.patch_size)


def _layers_top_down(model) -> list:
    return stacked_layers([("classifier", model.classifier), ("vit.layernorm", model.vit.layernorm)], "vit.layers",
                          model.vit.layers, ("vit.embeddings", model.vit.embeddings))


ADAPTER = FamilyAdapter(
    name="vit",
    order=0,
    model_types=("vit",),
    display_name="ViT",
    card_text="A Vision Transformer (ViT, Dosovitskiy et al. 2021; transformers' `ViTForImageClassification`).",
    card_tags=("vit",),
    pretrained={"vit": "google/vit-base-patch16-224-in21k"},
    random_presets=SIZES,
    load_pretrained=_pretrained,
    build_random=_random,
    override_example="'hidden_size=192,intermediate_size=384'",
    default_recipe="seed",
    head=lambda model: model.classifier,
    gradcam_layer=_gradcam_layer,
    # Rollout first: ViT's attention is what it has that a CNN does not.
    explanations=("rollout", "actmax"),
    # Measured on four ViTs (tiny and small presets, two seeds each) trained to use planted marks: Grad-CAM at the
    # token layer put 1.1-4.3 times the marks' area share on them, rollout 4.6-6.3 (bar: 3; docs/explanations.md).
    not_offered={"gradcam": "ViT's Grad-CAM maps missed a planted marker that the model used (hfxray's positive "
                            "control, docs/explanations.md), so they are no reliable picture of what a ViT uses"},
    attention="transformers",
    attention_blocks=lambda model: model.vit.layers,
    layers_top_down=_layers_top_down,
)
