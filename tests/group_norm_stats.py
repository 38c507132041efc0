"""Run a model with the GroupNorm statistics of other images: how the planted-marker control keeps BiT and the hybrid
from reading a mark through image-wide statistics (tests/test_explain_control.py).

GroupNorm normalises each group of channels by its mean and variance over the whole image. Two marks that share
their pixel histogram still give their features different statistics (a square and a bar have different edge
lengths), so a model with GroupNorm can tell them apart from anywhere in the image; trained on marked images, the
tiny hybrid did exactly that. Trained under `paired_statistics` (each image of a batch with each mark at the same
place, both normalised with the pair's mean statistics), a model can only read a mark where it is;
`forward_with_statistics_of(model, images, source)` checks that it does: `images` normalised with the statistics of
`source` (the same images carrying the other mark).

Two differences from GroupNorm, both deliberate: the statistics are taken without gradient (they are constants of
each step, as in record and replay), and a trained model is evaluated and explained with each image's own
statistics, as users run it, not the paired ones it was trained with (its held-out accuracy on the marks is
checked that way).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


def _statistics(module: nn.GroupNorm, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and group: (mean, variance), each shaped (batch, groups, 1), as nn.GroupNorm computes them."""
    grouped = inputs.detach().reshape(inputs.shape[0], module.num_groups, -1)
    return grouped.mean(-1, keepdim=True), grouped.var(-1, unbiased=False, keepdim=True)


def _normalise(module: nn.GroupNorm, inputs: torch.Tensor, statistics) -> torch.Tensor:
    """nn.GroupNorm's arithmetic with given statistics, folded with the affine parameters into one scale and shift
    per image and channel (two passes over the activations instead of six); then the activation transformers'
    BitGroupNormActivation (`activation`) and timm's GroupNormAct (`drop`, `act`) apply after it."""
    mean, variance = statistics
    batch, channels = inputs.shape[:2]
    per_group = channels // module.num_groups
    scale = torch.rsqrt(variance + module.eps).repeat_interleave(per_group, dim=1).reshape(batch, channels)
    shift = -mean.repeat_interleave(per_group, dim=1).reshape(batch, channels) * scale
    if module.affine:
        scale, shift = scale * module.weight, shift * module.weight + module.bias
    expand = (batch, channels) + (1,) * (inputs.dim() - 2)
    out = inputs * scale.reshape(expand) + shift.reshape(expand)
    if hasattr(module, "act"):
        out = module.act(module.drop(out))
    elif hasattr(module, "activation"):
        out = module.activation(out)
    return out


def _group_norm_modules(model: nn.Module) -> list[nn.GroupNorm]:
    return [module for module in model.modules() if isinstance(module, nn.GroupNorm)]


def has_group_norm(model: nn.Module) -> bool:
    return bool(_group_norm_modules(model))


@contextmanager
def _group_norms_run(model: nn.Module, forward) -> Iterator[None]:
    """Every GroupNorm of `model` runs `forward(module, inputs, own_forward)` instead of its own forward."""
    modules = _group_norm_modules(model)
    for module in modules:
        module.forward = lambda inputs, module=module, own=module.forward: forward(module, inputs, own)
    try:
        yield
    finally:
        for module in modules:
            del module.forward  # back to the class's forward


def _recording(record: dict):
    def forward(module, inputs, own):
        record[module] = _statistics(module, inputs)
        return own(inputs)

    return forward


def _replaying(replay: dict):
    return lambda module, inputs, own: _normalise(module, inputs, replay[module])


def _paired(value: torch.Tensor) -> torch.Tensor:
    pairs = value.reshape(-1, 2, *value.shape[1:])
    return pairs.mean(1, keepdim=True).expand_as(pairs).reshape(value.shape)


@contextmanager
def paired_statistics(model: nn.Module) -> Iterator[None]:
    """Every GroupNorm of `model` normalises images 2k and 2k + 1 of a batch alike, with the mean of their two
    statistics: given a batch of pairs (one image with each mark, at the same place), the statistics say nothing
    about which mark an image carries, at no cost beyond the batch's own forward pass."""
    def forward(module, inputs, own):
        mean, variance = _statistics(module, inputs)
        return _normalise(module, inputs, (_paired(mean), _paired(variance)))

    with _group_norms_run(model, forward):
        yield


def forward_with_statistics_of(model: nn.Module, images: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Logits of `images`, every GroupNorm using the statistics `source` gives (image by image)."""
    statistics: dict = {}
    with torch.no_grad(), _group_norms_run(model, _recording(statistics)):
        model(pixel_values=source)
    with _group_norms_run(model, _replaying(statistics)):
        return model(pixel_values=images).logits
