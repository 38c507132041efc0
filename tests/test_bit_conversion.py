"""timm ResNetV2 (BiT) -> BitForImageClassification: equal outputs, strict key mapping, offline cache and errors."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # never wait on Hub retries; set before huggingface_hub is imported

from functools import partial

import pytest
import timm
import torch
from huggingface_hub.errors import LocalEntryNotFoundError
from timm.layers import GroupNormAct, StdConv2d
from timm.models.resnetv2 import ResNetV2
from transformers import AutoImageProcessor, AutoModelForImageClassification, BitForImageClassification

from hfxray.bit_conversion import (
    BIT_IN21K_CHECKPOINT,
    BitConversionError,
    HubDownloadError,
    UnsupportedTimmModelError,
    bit_cache_folder,
    bit_config_from_timm,
    convert_timm_resnetv2,
    load_bit_in21k,
)

NUM_TIMM_CLASSES = 5
TIMM_LABELS = {i: f"class_{i}" for i in range(NUM_TIMM_CLASSES)}
XRAY_LABELS = {0: "normal", 1: "virus"}
XRAY_IDS = {"normal": 0, "virus": 1}


def tiny_bit(conv_eps: float = 1e-8, seed: int = 0, **overrides) -> ResNetV2:
    """resnetv2_50x1_bit's recipe (fixed stem, StdConv2d, GroupNorm+ReLU, pre-activation) at 43 k parameters,
    with every GroupNorm affine and conv weight randomised so a wrong mapping cannot pass by accident."""
    torch.manual_seed(seed)
    kwargs = dict(
        layers=[1, 2, 1, 1],
        channels=(32, 64, 64, 128),
        stem_chs=16,
        num_classes=NUM_TIMM_CLASSES,
        stem_type="fixed",
        conv_layer=partial(StdConv2d, eps=conv_eps),
        norm_layer=partial(GroupNormAct, num_groups=4),
    )
    model = ResNetV2(**{**kwargs, **overrides})
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, GroupNormAct):
                module.weight.normal_(1.0, 0.5)
                module.bias.normal_(0.0, 0.5)
            elif isinstance(module, StdConv2d):
                module.weight.normal_(0.0, 1e-3)  # var ~ 1e-6: eps differences would show
        model.head.fc.bias.normal_()
    model.pretrained_cfg = timm.models.get_pretrained_cfg(BIT_IN21K_CHECKPOINT.split("/")[1]).to_dict()
    return model.eval()


def pixels(seed: int = 1) -> torch.Tensor:
    # 72 x 88 is no multiple of 32: exercises the stem padding and every stride-2 conv on odd sizes
    return torch.randn(2, 3, 72, 88, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("conv_eps", [1e-8, 1e-6])
def test_keep_head_logits_match_timm(conv_eps: float, tmp_path) -> None:
    timm_model = tiny_bit(conv_eps)
    model = convert_timm_resnetv2(timm_model, TIMM_LABELS, {v: k for k, v in TIMM_LABELS.items()}, keep_head=True)
    x = pixels()
    with torch.no_grad():
        expected = timm_model(x)
        logits = model(pixel_values=x).logits
    assert expected.abs().max() > 0.1  # outputs are not trivially tiny
    assert (logits - expected).abs().max() < 1e-4

    model.save_pretrained(tmp_path)
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert isinstance(reloaded, BitForImageClassification)
    with torch.no_grad():
        assert (reloaded(pixel_values=x).logits - expected).abs().max() < 1e-4


def test_eps_rescaling_is_needed_for_non_bit_eps() -> None:
    """Guards the eps=1e-6 case above: with these weights eps changes timm's outputs well beyond the tolerance."""
    x = pixels()
    with torch.no_grad():
        assert (tiny_bit(1e-6)(x) - tiny_bit(1e-8)(x)).abs().max() > 1e-2


def test_fresh_head_keeps_pooled_features() -> None:
    timm_model = tiny_bit()
    model = convert_timm_resnetv2(timm_model, XRAY_LABELS, XRAY_IDS)
    assert model.config.id2label == XRAY_LABELS and model.config.label2id == XRAY_IDS
    x = pixels()
    with torch.no_grad():
        assert model(pixel_values=x).logits.shape == (2, 2)
        pooled = model.bit(x).pooler_output.flatten(1)
        expected = timm_model.forward_head(timm_model.forward_features(x), pre_logits=True)
    assert (pooled - expected).abs().max() < 1e-5


def test_config_of_the_real_r50x1_architecture() -> None:
    timm_model = timm.create_model("resnetv2_50x1_bit", pretrained=False, device="meta")
    config = bit_config_from_timm(timm_model, XRAY_LABELS, XRAY_IDS)
    assert (config.embedding_size, config.hidden_sizes, config.depths) == (64, [256, 512, 1024, 2048], [3, 4, 6, 3])
    assert (config.num_groups, config.global_padding, config.embedding_dynamic_padding) == (32, None, False)
    assert config.layer_type == "preactivation" and config.num_labels == 2


def test_layouts_bit_cannot_express_are_refused() -> None:
    with pytest.raises(UnsupportedTimmModelError, match=r"stem has modules \['conv', 'pool'\].*to fix"):
        convert_timm_resnetv2(tiny_bit(stem_type=""), XRAY_LABELS, XRAY_IDS)
    stride_problem = r"stages\.3\.blocks\.0\.conv2 has stride \(1, 1\).*output_stride=32"
    with pytest.raises(UnsupportedTimmModelError, match=stride_problem):
        convert_timm_resnetv2(tiny_bit(output_stride=16), XRAY_LABELS, XRAY_IDS)
    with pytest.raises(BitConversionError, match="keep_head=True needs 5 labels"):
        convert_timm_resnetv2(tiny_bit(), XRAY_LABELS, XRAY_IDS, keep_head=True)


def test_unmapped_keys_are_named(monkeypatch) -> None:
    monkeypatch.setattr("hfxray.bit_conversion._KEY_RULES", ())
    with pytest.raises(BitConversionError, match=r"stem\.conv\.weight -> no rule.*to fix"):
        convert_timm_resnetv2(tiny_bit(), XRAY_LABELS, XRAY_IDS)


def test_cache_converts_once_then_reuses(tmp_path) -> None:
    calls = []

    def factory(checkpoint: str) -> ResNetV2:
        calls.append(checkpoint)
        return tiny_bit()

    torch.manual_seed(7)
    first = load_bit_in21k(cache_dir=tmp_path, timm_model_factory=factory)
    folder = bit_cache_folder(BIT_IN21K_CHECKPOINT, tmp_path)
    assert folder.name == "timm--resnetv2_50x1_bit.goog_in21k" and (folder / "model.safetensors").is_file()
    torch.manual_seed(7)
    second = load_bit_in21k(cache_dir=tmp_path, timm_model_factory=factory)
    assert calls == [BIT_IN21K_CHECKPOINT]
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]  # no temp folder left behind

    assert second.config.id2label == XRAY_LABELS and second.name_or_path == str(folder)
    first_state, second_state = first.state_dict(), second.state_dict()
    assert all(torch.equal(first_state[k], second_state[k]) for k in first_state)  # same seed -> same head too
    processor = AutoImageProcessor.from_pretrained(second.name_or_path)
    assert list(processor.image_mean) == [0.5, 0.5, 0.5] and processor.crop_size["height"] == 224


@pytest.mark.parametrize(
    "error", [OSError("connection refused"), LocalEntryNotFoundError("cannot find the requested files")]
)
def test_download_failure_names_the_checkpoint(error: Exception, tmp_path) -> None:
    def factory(checkpoint: str) -> ResNetV2:
        raise error

    with pytest.raises(HubDownloadError, match="timm/resnetv2_50x1_bit.goog_in21k.*needs network access.*To fix"):
        load_bit_in21k(cache_dir=tmp_path, timm_model_factory=factory)
    assert not any(tmp_path.iterdir())


def test_default_factory_offline_gives_the_clear_error(tmp_path) -> None:
    with pytest.raises(HubDownloadError, match="HF_HUB_OFFLINE is set.*hf download timm/resnetv2_50x1_bit"):
        load_bit_in21k(cache_dir=tmp_path)
