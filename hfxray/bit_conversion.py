"""timm ResNetV2 (BiT) weights -> transformers' native `BitForImageClassification`.

BiT-M-R50x1 ImageNet-21k weights exist on the Hub only in timm format (`timm/resnetv2_50x1_bit.goog_in21k`).
Converting them gives a model that the HF Trainer, `AutoModelForImageClassification`, `pipeline` and
`BitImageProcessor` handle natively, without `TimmWrapper*`.

What the two implementations share, checked on timm 1.0.31 / transformers 5.24.0:
- Pre-activation: every bottleneck runs GroupNorm+ReLU *before* its convolutions (`norm1/conv1`, `norm2/conv2`,
  `norm3/conv3`); the stem is a bare 7x7 conv with no norm, and the only norm after the last stage is the final
  GroupNorm+ReLU (`timm: norm`, `HF: bit.norm`) that feeds average pooling and the head.
- Padding: BiT's stem is timm's `stem_type='fixed'` (symmetric conv padding, then zero-pad 1 and a 3x3/2 max pool
  with no padding); that is BitConfig's `global_padding=None, embedding_dynamic_padding=False`, not "SAME".
- Weight standardisation: timm's BiT convs are `StdConv2d(eps=1e-8)` (the class default is 1e-6) and every HF
  `WeightStandardizedConv2d` in a BiT model is built with eps=1e-8 (its class default, 1e-6, is never used).
  Another eps is converted exactly by scaling the weights (see `_eps_scale`).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import timm
import torch
from huggingface_hub.errors import EntryNotFoundError, HTTPError
from timm.layers import GroupNormAct, StdConv2d
from timm.models.resnetv2 import DownsampleConv, PreActBottleneck, ResNetV2
from torch import nn
from transformers import BitConfig, BitForImageClassification, BitImageProcessor
from transformers.image_utils import PILImageResampling
from transformers.models.bit.modeling_bit import get_padding_value

from .data.labels import CLASS_NAMES
from .env import hub_offline, hub_source
from .errors import HfxrayError, excerpt

BIT_IN21K_CHECKPOINT = "timm/resnetv2_50x1_bit.goog_in21k"
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "hfxray" / "bit"
HEAD_KEYS = ("classifier.1.weight", "classifier.1.bias")
# timm state-dict key -> BitForImageClassification key (transformers 5.x module names).
_KEY_RULES = (
    (re.compile(r"^stem\.conv\.weight$"), "bit.embedder.convolution.weight"),
    (re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.(.+)$"), r"bit.encoder.stages.\1.layers.\2.\3"),
    (re.compile(r"^norm\.(weight|bias)$"), r"bit.norm.\1"),
    (re.compile(r"^head\.fc\.(weight|bias)$"), r"classifier.1.\1"),
)
_RESAMPLING = {
    "nearest": PILImageResampling.NEAREST,
    "bilinear": PILImageResampling.BILINEAR,
    "bicubic": PILImageResampling.BICUBIC,
}
# What timm/huggingface_hub raise when a checkpoint cannot be fetched: offline/no cache entry (OSError subclasses),
# missing files, and transport errors (huggingface_hub re-exports its HTTP client's HTTPError).
_DOWNLOAD_ERRORS = (OSError, EntryNotFoundError, HTTPError)
_SUPPORTED = (
    "to fix: pass a BiT-style timm ResNetV2 such as resnetv2_50x1_bit (stem_type='fixed', StdConv2d, "
    "GroupNormAct with ReLU, pre-activation bottlenecks, output_stride=32, average pooling)"
)


class UnsupportedTimmModelError(HfxrayError, ValueError):
    """The timm model uses a layout that BitConfig cannot express, so a conversion would change its outputs."""


class BitConversionError(HfxrayError, ValueError):
    """State dicts that do not line up key for key; raised instead of silently leaving weights random."""


class HubDownloadError(HfxrayError, RuntimeError):
    """The timm checkpoint could not be fetched from the Hugging Face Hub (no network or no local copy)."""


def _unsupported(problems: list[str]) -> UnsupportedTimmModelError:
    return UnsupportedTimmModelError("cannot convert this timm model: " + "; ".join(problems) + f"; {_SUPPORTED}")


def _check_stem(stem: nn.Module, problems: list[str]) -> None:
    """BitEmbeddings (non-SAME) = symmetric 7x7/2 conv, zero-pad 1, 3x3/2 max pool without padding: timm 'fixed'."""
    parts = dict(stem.named_children())
    pad, pool = parts.get("pad"), parts.get("pool")
    if list(parts) != ["conv", "pad", "pool"] or not isinstance(parts["conv"], StdConv2d):
        problems.append(f"stem has modules {list(parts)} (expected StdConv2d conv, pad, pool: stem_type='fixed')")
    elif not (isinstance(pad, nn.ConstantPad2d) and pad.padding == (1, 1, 1, 1) and pad.value == 0.0):
        problems.append(f"stem pad is {pad} (expected ConstantPad2d(1, 0.0))")
    elif not (isinstance(pool, nn.MaxPool2d) and pool.kernel_size == 3 and pool.stride == 2 and pool.padding == 0):
        problems.append(f"stem pool is {pool} (expected MaxPool2d(3, stride=2, padding=0))")


def _check_norm(name: str, norm: nn.Module, problems: list[str]) -> None:
    """HF's BitGroupNormActivation is GroupNorm(eps=1e-5, affine) + config.hidden_act ("relu" here)."""
    if not isinstance(norm, GroupNormAct) or not norm.affine or norm.eps != 1e-5 or not isinstance(norm.act, nn.ReLU):
        problems.append(f"{name} is {norm} (expected GroupNormAct with affine weights, eps=1e-5 and ReLU)")


def _check_stages(stages: nn.Module, problems: list[str]) -> None:
    """HF builds only stride-(1,2,2,2) pre-activation bottleneck stages whose first block has a 1x1 projection."""
    for stage_idx, stage in enumerate(stages):
        for block_idx, block in enumerate(stage.blocks):
            where = f"stages.{stage_idx}.blocks.{block_idx}"
            if not isinstance(block, PreActBottleneck):
                problems.append(f"{where} is {type(block).__name__} (expected PreActBottleneck)")
                continue
            if block_idx == 0 and not isinstance(block.downsample, DownsampleConv):
                problems.append(f"{where}.downsample is {type(block.downsample).__name__} (expected DownsampleConv)")
            expected_stride = (1 if stage_idx == 0 or block_idx > 0 else 2,) * 2
            if block.conv2.stride != expected_stride or block.conv2.groups != 1:
                problems.append(
                    f"{where}.conv2 has stride {block.conv2.stride}, groups {block.conv2.groups} "
                    f"(expected stride {expected_stride}, groups 1)"
                )
            for norm_name in ("norm1", "norm2", "norm3"):
                _check_norm(f"{where}.{norm_name}", getattr(block, norm_name), problems)


def _check_convs(timm_model: nn.Module, problems: list[str]) -> None:
    """Every conv must be a plain StdConv2d with PyTorch symmetric padding (StdConv2dSame pads per input size)."""
    for name, module in timm_model.named_modules():
        if not isinstance(module, nn.Conv2d) or name == "head.fc":
            continue
        kernel, stride, dilation = module.kernel_size[0], module.stride[0], module.dilation[0]
        hf_padding, _ = get_padding_value(None, kernel, stride=stride, dilation=dilation)
        if not isinstance(module, StdConv2d) or module.dilation != (1, 1) or module.padding != (hf_padding,) * 2:
            problems.append(
                f"{name} is {type(module).__name__} with padding {module.padding}, dilation {module.dilation} "
                f"(expected StdConv2d, padding {(hf_padding,) * 2}, dilation (1, 1))"
            )


def bit_config_from_timm(
    timm_model: nn.Module, id2label: Mapping[int, str], label2id: Mapping[str, int]
) -> BitConfig:
    """Read the BitConfig off a timm ResNetV2's modules, refusing layouts that BitConfig would silently change.

    `hidden_sizes` are the real stage widths with `width_factor=1`: HF sizes the final norm and the head from
    `hidden_sizes[-1]` without applying the width factor, so folding the factor back out would break x3 models.
    """
    if not isinstance(timm_model, ResNetV2):
        raise _unsupported([f"got {type(timm_model).__name__}, not timm.models.resnetv2.ResNetV2"])
    problems: list[str] = []
    _check_stem(timm_model.stem, problems)
    _check_stages(timm_model.stages, problems)
    _check_convs(timm_model, problems)
    _check_norm("norm (final, pre-activation)", timm_model.norm, problems)
    pool_type = getattr(timm_model.head.global_pool, "pool_type", None)
    if pool_type != "avg":
        problems.append(f"head pools with {pool_type!r} (expected 'avg')")
    group_counts = {m.num_groups for m in timm_model.modules() if isinstance(m, GroupNormAct)}
    if len(group_counts) > 1:
        problems.append(f"GroupNorm layers use different group counts {sorted(group_counts)} (BitConfig has one)")
    if problems:
        raise _unsupported(problems)

    stem_conv = timm_model.stem.conv
    return BitConfig(
        num_channels=stem_conv.in_channels,
        embedding_size=stem_conv.out_channels,
        hidden_sizes=[stage.blocks[0].conv3.out_channels for stage in timm_model.stages],
        depths=[len(stage.blocks) for stage in timm_model.stages],
        layer_type="preactivation",
        hidden_act="relu",
        global_padding=None,
        embedding_dynamic_padding=False,
        num_groups=group_counts.pop(),
        output_stride=32,
        width_factor=1,
        id2label={int(k): v for k, v in id2label.items()},
        label2id={k: int(v) for k, v in label2id.items()},
    )


def _map_key(timm_key: str) -> str | None:
    for pattern, replacement in _KEY_RULES:
        if pattern.match(timm_key):
            return pattern.sub(replacement, timm_key)
    return None


def _eps_scale(timm_eps: float, hf_eps: float) -> float:
    """Factor a such that standardising a*W with hf_eps equals standardising W with timm_eps, exactly.

    a(W - mean) / sqrt(a^2 var + hf_eps) = (W - mean) / sqrt(var + timm_eps)  <=>  a^2 timm_eps = hf_eps.
    """
    return math.sqrt(hf_eps / timm_eps)


def convert_timm_resnetv2(
    timm_model: nn.Module,
    id2label: Mapping[int, str],
    label2id: Mapping[str, int],
    keep_head: bool = False,
) -> BitForImageClassification:
    """Build a BitForImageClassification with the timm backbone weights (eval mode).

    keep_head=False drops timm's classifier (e.g. 21,843 ImageNet-21k classes) for a fresh `len(id2label)` head;
    keep_head=True copies it (its 1x1 conv reshaped to Linear), which needs `len(id2label)` == timm's classes.
    """
    config = bit_config_from_timm(timm_model, id2label, label2id)
    if keep_head and config.num_labels != timm_model.num_classes:
        raise BitConversionError(
            f"keep_head=True needs {timm_model.num_classes} labels (timm's head), got {config.num_labels}; "
            "to fix: pass id2label/label2id for every timm class, or keep_head=False for a fresh head"
        )
    model = BitForImageClassification(config)
    hf_state = model.state_dict()
    timm_convs = {name: module for name, module in timm_model.named_modules() if isinstance(module, StdConv2d)}

    mapped: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for timm_key, value in timm_model.state_dict().items():
        hf_key = _map_key(timm_key)
        if hf_key in HEAD_KEYS and not keep_head:
            continue
        if hf_key not in hf_state:
            unmapped.append(f"{timm_key} -> {hf_key or 'no rule'}")
            continue
        conv_name = timm_key.removesuffix(".weight")
        if conv_name in timm_convs:
            hf_eps = model.get_submodule(hf_key.removesuffix(".weight")).eps
            value = value * _eps_scale(timm_convs[conv_name].eps, hf_eps)
        if hf_key == "classifier.1.weight" and value.ndim == 4:
            value = value.flatten(1)  # timm's head is a 1x1 conv: (classes, C, 1, 1) -> Linear (classes, C)
        if value.shape != hf_state[hf_key].shape:
            unmapped.append(f"{timm_key} {tuple(value.shape)} -> {hf_key} {tuple(hf_state[hf_key].shape)}")
            continue
        mapped[hf_key] = value
    missing = sorted(set(hf_state) - set(mapped) - (set() if keep_head else set(HEAD_KEYS)))
    if unmapped or missing:
        raise BitConversionError(
            f"timm -> Bit state dicts do not line up: unmapped timm keys {unmapped}, Bit keys left unset {missing}; "
            "to fix: update _KEY_RULES in hfxray/bit_conversion.py for these timm/transformers versions"
        )
    model.load_state_dict(mapped, strict=keep_head)
    return model.eval()


def bit_image_processor_from_timm(timm_model: nn.Module) -> BitImageProcessor:
    """Processor reproducing timm's eval transform: BitImageProcessor's own defaults (CLIP mean/std) are wrong for
    BiT, which was trained on inputs scaled to [-1, 1] (mean = std = 0.5)."""
    data_config = timm.data.resolve_data_config({}, model=timm_model)
    _, height, width = data_config["input_size"]
    interpolation = data_config["interpolation"]
    if interpolation not in _RESAMPLING:
        raise UnsupportedTimmModelError(
            f"timm interpolation {interpolation!r} has no PIL equivalent; to fix: use one of {sorted(_RESAMPLING)}"
        )
    return BitImageProcessor(
        size={"shortest_edge": math.floor(min(height, width) / data_config["crop_pct"])},
        crop_size={"height": height, "width": width},
        resample=_RESAMPLING[interpolation],
        image_mean=list(data_config["mean"]),
        image_std=list(data_config["std"]),
    )


def bit_cache_folder(checkpoint: str = BIT_IN21K_CHECKPOINT, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where `load_bit_in21k` keeps the converted checkpoint: `<cache_dir>/<owner>--<name>`."""
    return Path(cache_dir or DEFAULT_CACHE_DIR).expanduser() / re.sub(r"[^A-Za-z0-9._-]+", "--", checkpoint)


def _create_timm_from_hub(checkpoint: str) -> nn.Module:
    # When the Hub cannot be reached, its cached copy (if any) is all there is: huggingface_hub would retry ~25 s.
    source, unreachable = hub_source(checkpoint)
    if source is None:
        raise OSError(f"the Hub cannot be reached ({unreachable}), and the repo is not in the local Hugging Face "
                      "cache")
    return timm.create_model(("hf-hub:" if source == checkpoint else "local-dir:") + source, pretrained=True)


def _is_cached(folder: Path) -> bool:
    return (folder / "config.json").is_file()  # complete by construction: folders appear by atomic rename


def _download(checkpoint: str, factory: Callable[[str], nn.Module], folder: Path) -> nn.Module:
    try:
        return factory(checkpoint)
    except _DOWNLOAD_ERRORS as err:
        offline = " (HF_HUB_OFFLINE is set)" if hub_offline() else ""
        raise HubDownloadError(
            f"cannot load timm checkpoint '{checkpoint}': converting it needs network access to the Hugging Face "
            f"Hub{offline} ({type(err).__name__}: {excerpt(err, 200)}). To fix: run once with network (the converted "
            f"model is then cached in {folder}), or download it beforehand with `hf download {checkpoint}` and pass "
            "the local folder with --checkpoint; --preset tiny or small trains without pretrained weights."
        ) from err


def _save_atomically(folder: Path, model: BitForImageClassification, processor: BitImageProcessor) -> None:
    """Write into a sibling temp folder and rename, so an interrupted run never leaves a half cache behind."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        tmp.rename(folder)
    except OSError:
        if not _is_cached(folder):  # a concurrent run that finished first is fine; anything else is not
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_bit_in21k(
    checkpoint: str = BIT_IN21K_CHECKPOINT,
    id2label: Mapping[int, str] | None = None,
    label2id: Mapping[str, int] | None = None,
    cache_dir: str | os.PathLike | None = None,
    timm_model_factory: Callable[[str], nn.Module] | None = None,
) -> BitForImageClassification:
    """BiT-M ImageNet-21k backbone as a native Bit model with a fresh head (normal/virus by default).

    The first call downloads the timm checkpoint (`timm_model_factory(checkpoint)`, default timm's hf-hub loader),
    converts it and saves model + BitImageProcessor to `bit_cache_folder(checkpoint, cache_dir)`; every call then
    loads from that folder, so `model.name_or_path` works with `AutoImageProcessor` and `pipeline`. The head is
    re-drawn on each call so it depends on the torch seed alone, whether or not the cache existed.
    """
    id2label = dict(id2label or dict(enumerate(CLASS_NAMES)))
    label2id = dict(label2id or {label: idx for idx, label in id2label.items()})
    folder = bit_cache_folder(checkpoint, cache_dir)
    if not _is_cached(folder):
        if folder.exists():
            raise BitConversionError(
                f"cache folder {folder} exists but holds no converted model; to fix: delete it and run again"
            )
        with torch.random.fork_rng(devices=[]):  # model building draws random numbers; a cache hit draws none
            timm_model = _download(checkpoint, timm_model_factory or _create_timm_from_hub, folder)
            converted = convert_timm_resnetv2(timm_model, id2label, label2id)
        _save_atomically(folder, converted, bit_image_processor_from_timm(timm_model))
    model = BitForImageClassification.from_pretrained(
        folder, id2label=id2label, label2id=label2id, ignore_mismatched_sizes=True
    )
    model.classifier[1].reset_parameters()  # same init as BitPreTrainedModel._init_weights for nn.Linear
    return model
