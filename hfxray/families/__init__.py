"""The family registry: one adapter per model family, discovered from the modules of this package.

A family is a model class whose modules sit in the same places (timm's `pretrained_cfg` idea: what differs per
family is data, not `if family == ...` across modules). Each public module here (`vit.py`, `bit.py`, ...) defines
one `ADAPTER` (`FamilyAdapter`): how its presets are built, its pretrained Hub ids, its head, its Grad-CAM layer,
its attention blocks, which explanations apply, its model-card text and its default recipe. Adding a family is
adding one module here and its recipe files in configs/recipes/ (`<family>-<recipe>.yaml`); every other module
asks this registry.

Modules named with a leading underscore are helpers, not families. Nothing here imports torch, transformers or the
modules that use the registry (models, training, explain), so any of them may import it.
"""

from __future__ import annotations

import importlib
import pkgutil

from ._base import METHODS, BuildRequest, FamilyAdapter, GradCamLayer, UnsupportedModelError

__all__ = ["ADAPTERS", "METHODS", "BuildRequest", "FamilyAdapter", "GradCamLayer", "UnsupportedModelError",
           "adapter_for", "adapter_for_name", "model_family", "model_names"]


def _discover() -> dict[str, FamilyAdapter]:
    """name -> adapter of every family module in this package, in the adapters' listing order."""
    found: list[FamilyAdapter] = []
    for module_info in pkgutil.iter_modules(__path__):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        adapter = getattr(module, "ADAPTER", None)
        if not isinstance(adapter, FamilyAdapter):
            raise ImportError(f"{module.__name__} defines no ADAPTER (a FamilyAdapter): every public module of "
                              "hfxray.families is one model family")
        found.append(adapter)
    adapters = sorted(found, key=lambda adapter: (adapter.order, adapter.name))
    names = [name for adapter in adapters for name in adapter.model_names]
    if len(set(names)) != len(names):
        raise ImportError(f"two families claim the same --model name: {sorted(names)}")
    return {adapter.name: adapter for adapter in adapters}


ADAPTERS: dict[str, FamilyAdapter] = _discover()


def model_names() -> tuple[str, ...]:
    """Every --model value, family by family (each family's own name first, then its pretrained-only variants)."""
    return tuple(name for adapter in ADAPTERS.values() for name in adapter.model_names)


def adapter_for_name(name: str) -> FamilyAdapter | None:
    """The family serving the --model value `name`, or None."""
    return next((adapter for adapter in ADAPTERS.values() if name in adapter.model_names), None)


def adapter_for(model_or_config) -> FamilyAdapter:
    """The adapter of a loaded model, its config, or a config.json read as a dict, from `model_type`."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = config.get("model_type", "") if isinstance(config, dict) else getattr(config, "model_type", "")
    for adapter in ADAPTERS.values():
        if model_type in adapter.model_types:
            return adapter
    known = ", ".join(adapter.display_name for adapter in ADAPTERS.values())
    raise UnsupportedModelError(f"unsupported model type {model_type!r}: hfxray handles {known} models. To fix: "
                                "use a model trained by hfxray")


def model_family(model_or_config) -> str:
    """The family name ("vit", "bit", ...) of a loaded model."""
    return adapter_for(model_or_config).name
