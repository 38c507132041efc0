"""BiT (Kolesnikov et al. 2020): transformers' `BitForImageClassification` (pre-activation ResNetV2)."""

from __future__ import annotations

from pathlib import Path

from ._base import BuildRequest, FamilyAdapter, GradCamLayer, stacked_layers

SIZES = {"tiny": dict(embedding_size=8, hidden_sizes=[8, 16, 32, 64], num_groups=4),
         "small": dict(embedding_size=32, hidden_sizes=[64, 128, 256, 512], num_groups=8)}
STUDY_WEIGHTS = "timm/resnetv2_50x1_bit.goog_in21k"  # BiT-M-R50x1, ImageNet-21k: the study's model
IN1K_WEIGHTS = "google/bit-50"  # BiT-M in21k *then fine-tuned on ImageNet-1k*: offered for comparison only


def _pretrained(request: BuildRequest):
    from transformers import BitForImageClassification

    # google/bit-50 and already converted / fine-tuned folders are transformers models already.
    if request.name == "bit_in1k" or (request.checkpoint and Path(request.checkpoint).expanduser().is_dir()):
        return request.from_pretrained(BitForImageClassification.from_pretrained, request.source, **request.labels,
                                       ignore_mismatched_sizes=True)
    from ..bit_conversion import load_bit_in21k

    return load_bit_in21k(request.source, id2label=request.labels["id2label"],
                          label2id=request.labels["label2id"])


def _random(request: BuildRequest):
    from transformers import BitConfig, BitForImageClassification

    sizes = SIZES[request.preset]
    request.check_config_keys(BitConfig, ["depths", *sizes])
    return request.from_scratch(BitForImageClassification, BitConfig,
                                dict(depths=[1, 1, 1, 1], layer_type="preactivation", **sizes, **request.labels)
                                | request.overrides)


# The last stage's output, before the final GroupNorm+ReLU (measured on models trained on the real sample): in a
# model whose final channels are mostly dead (the seed recipe's Adam at lr 0.1 left 3 of tiny BiT's 64 alive) the
# rectified map after the norm had no positive cell for 63 of 92 "virus" test maps; at the stage output 17, all
# with zero gradient. BiT pads every strided conv / pool by (k - 1) / 2, so cell i is centred on input pixel
# stride * i (both its residual paths agree).
def _gradcam_layer(model) -> GradCamLayer:
    return GradCamLayer(model.bit.encoder.stages[-1], "bit.encoder.stages[-1]", top_left_anchored=True)


def _layers_top_down(model) -> list:
    return stacked_layers([("classifier", model.classifier), ("bit.norm", model.bit.norm)], "bit.encoder.stages",
                          model.bit.encoder.stages, ("bit.embedder", model.bit.embedder))


ADAPTER = FamilyAdapter(
    name="bit",
    order=1,
    model_types=("bit",),
    display_name="BiT",
    card_text="A Big Transfer ResNet (BiT, Kolesnikov et al. 2020; transformers' `BitForImageClassification`).",
    card_tags=("bit", "resnetv2"),
    pretrained={"bit": STUDY_WEIGHTS, "bit_in1k": IN1K_WEIGHTS},
    random_presets=SIZES,
    load_pretrained=_pretrained,
    build_random=_random,
    override_example="'hidden_sizes=[96,192,384,768]' or 'depths=[2,2,2,2]'",
    default_recipe="seed",
    head=lambda model: model.classifier[-1],  # Sequential(Flatten, Linear)
    gradcam_layer=_gradcam_layer,
    layers_top_down=_layers_top_down,
    explanations=("gradcam", "actmax"),  # no attention to roll out
)
