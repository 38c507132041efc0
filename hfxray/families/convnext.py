"""ConvNeXt (Liu et al. 2022, "A ConvNet for the 2020s"): transformers' native `ConvNextForImageClassification`.

Not one of the study's models: a modern CNN to compare with BiT and ViT. Its pretrained default is the
ImageNet-22k checkpoint, as the study's models are ImageNet-21k ones.
"""

from __future__ import annotations

from ._base import BuildRequest, FamilyAdapter, GradCamLayer, stacked_layers

# Four stages as in every ConvNeXt, one block each and a quarter of the smallest published widths (tiny), or the
# widths that keep the small preset near BiT's small one (about 1 M parameters).
SIZES = {"tiny": dict(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1]),
         "small": dict(hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 2, 1])}
PRETRAINED = "facebook/convnext-base-224-22k"
# The checkpoint's processor normalises with ImageNet's mean and std (its preprocessor_config.json); the random
# presets use the same, so that every ConvNeXt sees its inputs alike.
IMAGENET = dict(image_mean=(0.485, 0.456, 0.406), image_std=(0.229, 0.224, 0.225))


def _pretrained(request: BuildRequest):
    from transformers import ConvNextForImageClassification

    # The 22k checkpoint's 21,841-class head does not fit two classes: ignore_mismatched_sizes makes a fresh one.
    # The network is fully convolutional, so any input size loads as it is.
    return request.from_pretrained(ConvNextForImageClassification.from_pretrained, request.source, **request.labels,
                                   ignore_mismatched_sizes=True)


def _random(request: BuildRequest):
    from transformers import ConvNextConfig, ConvNextForImageClassification

    sizes = SIZES[request.preset]
    request.check_config_keys(ConvNextConfig, list(sizes))
    return request.from_scratch(ConvNextForImageClassification, ConvNextConfig,
                                dict(image_size=request.image_size, **sizes, **request.labels) | request.overrides)


# The last stage's output: the residual stream, signed (each block adds a layer-scaled branch to it), before the
# pooling and final LayerNorm. The patchify stem and the downsampling layers are unpadded stride-k k x k
# convolutions, so its cells tile the input exactly (not top-left anchored as BiT's are).
def _gradcam_layer(model) -> GradCamLayer:
    return GradCamLayer(model.convnext.encoder.stages[-1], "convnext.encoder.stages[-1]")


def _layers_top_down(model) -> list:
    network = model.convnext
    return stacked_layers([("classifier", model.classifier), ("convnext.layernorm", network.layernorm)],
                          "convnext.encoder.stages", network.encoder.stages, ("convnext.embeddings", network.embeddings))


ADAPTER = FamilyAdapter(
    name="convnext",
    order=3,
    model_types=("convnext",),
    display_name="ConvNeXt",
    card_text="A ConvNeXt (Liu et al. 2022; transformers' `ConvNextForImageClassification`).",
    card_tags=("convnext",),
    pretrained={"convnext": PRETRAINED},
    random_presets=SIZES,
    load_pretrained=_pretrained,
    build_random=_random,
    override_example="'hidden_sizes=[16,32,64,128]' or 'depths=[2,2,2,2]'",
    default_recipe="paper",  # configs/recipes/convnext-paper.yaml: the study never ran a ConvNeXt
    head=lambda model: model.classifier,
    gradcam_layer=_gradcam_layer,
    layers_top_down=_layers_top_down,
    explanations=("gradcam", "actmax"),  # no attention to roll out
    normalisation=IMAGENET,
)
