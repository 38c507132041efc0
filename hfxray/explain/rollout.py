"""Attention rollout (Abnar & Zuidema 2020) for transformers: how much each patch flows into the class token.

Per layer the head-averaged attention plus the identity (the residual path), renormalised per row, multiplied
through the layers; the class token's row over the patch tokens is the map. It explains no particular class.
BiT has no attention, so rollout does not apply to it.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
from torch import nn

from ..errors import HfxrayError
from ..families import adapter_for
from .upsample import upsample_to_input


class NotApplicable(HfxrayError, ValueError):
    """The explanation method does not exist for this model kind; the message says what to use instead."""


def rollout_from_attentions(attentions: list[torch.Tensor], num_prefix_tokens: int, grid: tuple[int, int],
                            has_cls: bool = True) -> torch.Tensor:
    """(B, h, w) rollout maps from per-layer attention probabilities shaped (B, heads, N, N)."""
    joint = None
    for attention in attentions:
        mixed = attention.mean(dim=1)
        mixed = mixed + torch.eye(mixed.shape[-1], dtype=mixed.dtype, device=mixed.device)
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        joint = mixed if joint is None else mixed @ joint
    # Without a class token (global average pooling) every patch token feeds the head: average their rows.
    flow = joint[:, 0] if has_cls else joint[:, num_prefix_tokens:].mean(dim=1)
    return flow[:, num_prefix_tokens:].reshape(-1, *grid)


def _token_grid(num_patches: int, size: tuple[int, int]) -> tuple[int, int]:
    """Patch grid (h, w) of `num_patches` tokens for an input of `size`: the aspect ratio fixes the split."""
    rows = max(1, round((num_patches * size[0] / size[1]) ** 0.5))
    if num_patches % rows:
        raise ValueError(f"{num_patches} patch tokens do not form a grid for a {size[0]}x{size[1]} input")
    return rows, num_patches // rows


@contextmanager
def _eager_attention(model: nn.Module) -> Iterator[None]:
    """SDPA returns no attention probabilities; switch to eager for the duration, then restore."""
    previous = model.config._attn_implementation
    if previous != "eager":
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if previous != "eager":
            model.set_attn_implementation(previous)


@contextmanager
def _timm_attention_probs(blocks: nn.Module, store: list[torch.Tensor]) -> Iterator[None]:
    """Collect timm attention probabilities from `attn_drop` (unfused path only), restoring fusion afterwards."""
    handles, fused = [], []
    for block in blocks:
        fused.append(block.attn.fused_attn)
        block.attn.fused_attn = False
        handles.append(block.attn.attn_drop.register_forward_hook(lambda _m, _i, out: store.append(out.detach())))
    try:
        yield
    finally:
        for block, was_fused, handle in zip(blocks, fused, handles):
            block.attn.fused_attn = was_fused
            handle.remove()


def rollout_map(model: nn.Module, pixel_values: torch.Tensor) -> np.ndarray:
    """Attention-rollout heatmaps in [0, 1] at input resolution, shape (B, H, W)."""
    adapter = adapter_for(model)
    size = tuple(pixel_values.shape[-2:])
    was_training = model.training
    model.eval()
    try:
        if adapter.attention == "transformers":
            patch = model.config.patch_size
            with _eager_attention(model), torch.no_grad():
                attentions = model(pixel_values=pixel_values, output_attentions=True).attentions
            maps = rollout_from_attentions(list(attentions), 1, (size[0] // patch, size[1] // patch))
        elif adapter.attention == "timm":
            blocks = adapter.attention_blocks(model)
            if blocks is None:
                raise NotApplicable(f"rollout needs a ViT-style timm model; {model.config.architecture} has no "
                                    "attention blocks. To fix: use --method gradcam")
            timm_model = model.timm_model
            attentions: list[torch.Tensor] = []
            with _timm_attention_probs(blocks, attentions), torch.no_grad():
                model(pixel_values=pixel_values)
            prefix = timm_model.num_prefix_tokens
            maps = rollout_from_attentions(attentions, prefix, _token_grid(attentions[0].shape[-1] - prefix, size),
                                           has_cls=timm_model.cls_token is not None)
        else:
            raise NotApplicable(f"attention rollout does not apply to {adapter.name} models (no attention). To "
                                "fix: use --method gradcam or actmax")
    finally:
        model.train(was_training)
    return upsample_to_input(maps, size)
