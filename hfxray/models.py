"""Model registry: `--model NAME --preset PRESET` -> (model, image processor), timm `create_model` style.

Presets:
- `full`: the family's pretrained checkpoint from the Hub (the study's ImageNet-21k ones), with a fresh 2-class head.
- `small`: randomly initialised models of the same classes (0.1-1.5 M parameters, 128 px), the from-scratch control.
- `tiny`: the smallest models of the same classes (64 px), for tests, CI and the demo.

What each family builds per preset is its adapter's (`hfxray.families`); this module looks the adapter up, lends it
the safe loaders below and gives every model the same kind of processor (resize the shortest edge, or to a square
with `resize_mode: square`, center-crop, scale to the family's mean/std) so that one data path serves all and
`pipeline("image-classification")` reproduces it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from .data.labels import CLASS_NAMES
from .env import hub_offline, hub_source, hub_unreachable, looks_local
from .errors import HfxrayError, excerpt, printable
from .families import ADAPTERS, BuildRequest, FamilyAdapter, adapter_for_name, model_names

ID2LABEL = dict(enumerate(CLASS_NAMES))
LABEL2ID = {name: index for index, name in ID2LABEL.items()}
MODEL_NAMES = model_names()  # every family's --model values (hfxray/families/)
PRESETS = ("full", "small", "tiny")
# ViT-21k, BiT-M and the original hybrid weights were all trained on inputs scaled to [-1, 1]; a family whose
# weights expect otherwise says so in its adapter (`normalisation`).
MINUS_ONE_TO_ONE = dict(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])


class ModelLoadError(HfxrayError):
    """A checkpoint could not be loaded; the message names it and says how to get it."""


class ModelSpecError(HfxrayError, ValueError):
    """No registry entry for this --model / --preset pair."""


@dataclass(frozen=True)
class ModelSpec:
    """What `--model NAME --preset PRESET` builds."""

    name: str
    preset: str
    checkpoint: str | None  # Hub id of the pretrained weights (full preset), else None
    image_size: int
    family: FamilyAdapter = field(repr=False, compare=False)

    @property
    def tag(self) -> str:
        """timm-style tagged name, e.g. `bit.tiny` or `vit.full`."""
        return f"{self.name}.{self.preset}"


def _labels() -> dict:
    return dict(num_labels=len(ID2LABEL), id2label=dict(ID2LABEL), label2id=dict(LABEL2ID))


# How images are resized before the center crop: `shortest_edge` keeps the aspect (the shortest edge at the resize
# size); `square` resizes every image to resize x resize, aspect not kept (a source whose images were stored squashed
# to a square then looks like one whose images were not).
RESIZE_MODES = ("shortest_edge", "square")


def build_processor(crop_size: int, resize_size: int | None = None, image_mean=None, image_std=None,
                    resize_mode: str = "shortest_edge"):
    """Resize (`resize_mode`, see RESIZE_MODES) to `resize_size` (default: the crop size), center-crop, normalise."""
    from transformers import BitImageProcessor
    from transformers.image_utils import PILImageResampling

    if resize_mode not in RESIZE_MODES:
        raise ModelSpecError(f"resize mode {resize_mode!r}. To fix: use one of {', '.join(RESIZE_MODES)}.")
    mean_std = dict(MINUS_ONE_TO_ONE)
    if image_mean is not None:
        mean_std = dict(image_mean=list(image_mean), image_std=list(image_std))
    side = resize_size or crop_size
    return BitImageProcessor(
        do_resize=True,
        # transformers 5.24 resizes a {"height", "width"} size to exactly that, whatever the image's aspect.
        size={"height": side, "width": side} if resize_mode == "square" else {"shortest_edge": side},
        # Bilinear, as hfxray's cached training/evaluation tensors are resized (`transforms.decode_resized`), so
        # `pipeline` sees the same pixels; BitImageProcessor's default is bicubic.
        resample=PILImageResampling.BILINEAR,
        do_center_crop=True,
        crop_size={"height": crop_size, "width": crop_size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        do_convert_rgb=True,
        **mean_std,
    )


# Weight files transformers can read without unpickling; a folder with only pickled weights is refused.
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model.pt")


# A model folder's JSON is a few KiB (a config with a thousand class names ~100 KiB) and a few levels deep; larger
# or deeper files are refused before parsing (a 1 GB config.json took 58 s and 6 GB; 200,000 levels overflow).
MAX_JSON_BYTES = 4 * 2**20
MAX_JSON_DEPTH = 64


def _json_depth(value, limit: int, depth: int = 1) -> int:
    if depth > limit or not isinstance(value, (dict, list)):
        return depth if isinstance(value, (dict, list)) else depth - 1
    children = value.values() if isinstance(value, dict) else value
    return max([depth, *(_json_depth(child, limit, depth + 1) for child in children)])


def _read_model_json(path: Path):
    """A model folder's JSON file, refused in one line when too large, too deep or not JSON."""
    fix = "To fix: restore the file from the run folder or the Hub."
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise ModelLoadError(f"{printable(str(path))}: {size / 2**20:,.1f} MiB, above hfxray's limit of "
                                 f"{MAX_JSON_BYTES / 2**20:g} MiB for a model folder's JSON. {fix}")
        value = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:  # the decoder's own guard, before MAX_JSON_DEPTH could be checked
        value = None
        depth_text = "nested deeper than Python's recursion limit"
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ModelLoadError(f"{printable(str(path))}: not valid JSON ({excerpt(err, 120)}). {fix}") from None
    else:
        depth = _json_depth(value, MAX_JSON_DEPTH)
        depth_text = f"nested more than {MAX_JSON_DEPTH} levels deep" if depth > MAX_JSON_DEPTH else ""
    if depth_text:
        raise ModelLoadError(f"{printable(str(path))}: {depth_text}, above hfxray's limit of {MAX_JSON_DEPTH} "
                             f"for a model folder's JSON. {fix}")
    return value


def check_model_folder(checkpoint: str | os.PathLike, *, weights: bool = True) -> Path | None:
    """The local folder `checkpoint` names, checked to be a loadable, code-free model; None for a Hub id.

    Refuses, with what to do: a missing folder, a folder without config.json, a config that asks for its own
    Python code (`auto_map`: hfxray never runs a model folder's code), and (when `weights`) a folder whose weights
    exist only as a pickle, which can run code when read.
    """
    name = os.fspath(checkpoint)
    if not looks_local(name):
        return None
    folder = Path(name).expanduser()
    if not folder.is_dir():
        raise ModelLoadError(f"{name}: {'not a folder' if folder.exists() else 'no such folder'}. To fix: pass the "
                             "--output_dir of a training run (config.json, model.safetensors, "
                             "preprocessor_config.json) or a Hub id such as owner/name.")
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{name}: no config.json, so not a saved model. To fix: pass the --output_dir of a "
                             "training run, or a folder written by save_pretrained.")
    config = _read_model_json(folder / "config.json")
    if (folder / "preprocessor_config.json").is_file():
        _read_model_json(folder / "preprocessor_config.json")
    if not isinstance(config, dict):
        raise ModelLoadError(f"{folder / 'config.json'}: not a JSON object. To fix: restore the file.")
    if config.get("auto_map"):
        raise ModelLoadError(f"{name}: config.json asks to run the folder's own Python code (auto_map), which "
                             "hfxray never does. To fix: use a model saved by hfxray or transformers' built-in "
                             f"classes ({', '.join(family.display_name for family in ADAPTERS.values())}).")
    if weights and not any((folder / safe).is_file() for safe in SAFE_WEIGHTS):
        pickled = [p for p in PICKLED_WEIGHTS if (folder / p).is_file()]
        if pickled:
            raise ModelLoadError(f"{name}: weights only as a pickle ({pickled[0]}), which can run code when "
                                 "loaded. To fix: convert it once in a trusted environment with "
                                 "`AutoModelForImageClassification.from_pretrained(folder).save_pretrained(folder, "
                                 "safe_serialization=True)`, which writes model.safetensors.")
        raise ModelLoadError(f"{name}: no model.safetensors. To fix: pass a complete run folder (training writes "
                             "model.safetensors at its end).")
    return folder


def load_errors() -> tuple[type[BaseException], ...]:
    """What `from_pretrained` raises for a missing, damaged or unreachable checkpoint (not for a bug)."""
    from safetensors import SafetensorError

    return OSError, ValueError, RuntimeError, SafetensorError


def _from_pretrained(loader, checkpoint: str, *, weights: bool = True, **kwargs):
    """Call a `from_pretrained` safely (never remote code; weights from safetensors only) with one clear message.

    `weights=False` for loaders that read no weights (image processors).
    """
    from .logs import hide_weight_loading_bars

    hide_weight_loading_bars()
    folder, source = model_source(checkpoint, weights=weights)
    kwargs["trust_remote_code"] = False
    if weights:
        kwargs["use_safetensors"] = True
    try:
        return loader(source, **kwargs)
    except load_errors() as err:
        if folder is not None:
            raise ModelLoadError(f"cannot load {checkpoint} ({type(err).__name__}: {excerpt(err, 200)}). To fix: "
                                 "the folder's files are damaged or incomplete; copy the run folder again or "
                                 "retrain.") from None
        raise ModelLoadError(hub_load_message(checkpoint, source, err)) from None


def hub_load_message(checkpoint: str, source: str, err: BaseException) -> str:
    """The one line for a Hub id that failed to load from `source` (the id, or its cached copy when unreachable)."""
    if source != checkpoint:
        return _hub_message(checkpoint, f": it cannot be reached ({hub_unreachable()}), and its copy in the local "
                                        f"Hugging Face cache ({source}) is incomplete ({type(err).__name__}: "
                                        f"{excerpt(err)})")
    return _hub_message(checkpoint, f" ({type(err).__name__}: {excerpt(err)})")


def _hub_message(checkpoint: str, why: str) -> str:
    return (f"cannot load {checkpoint!r}: there is no such local folder, and as a Hub id it needs the Hugging Face "
            f"Hub{' (HF_HUB_OFFLINE is set)' if hub_offline() else ''}{why}. To fix: check the folder name, or run "
            f"once with network access, or download the Hub repo beforehand with `hf download {checkpoint} "
            "--local-dir DIR` and pass DIR (--checkpoint DIR when training, --model DIR elsewhere).")


def cached_if_unreachable(checkpoint: str) -> str:
    """A Hub id as it is, or, when the Hub cannot be reached, the folder of its copy in the local Hugging Face
    cache: huggingface_hub would otherwise retry for about 25 s before failing. ModelLoadError when not cached."""
    source, unreachable = hub_source(checkpoint)
    if source is None:
        raise ModelLoadError(_hub_message(checkpoint, f": it cannot be reached ({unreachable}), and the repo is "
                                                      "not in the local Hugging Face cache"))
    return source


def model_source(checkpoint: str, *, weights: bool = True) -> tuple[Path | None, str]:
    """(the checked local folder or None, what `from_pretrained` / `pipeline` should load: that folder, the Hub
    id, or the Hub id's cached copy when the Hub cannot be reached). ModelLoadError with what to change."""
    folder = check_model_folder(checkpoint, weights=weights)
    return folder, str(folder) if folder else cached_if_unreachable(checkpoint)


def split_top_level(text: str) -> list[str]:
    """Split at commas outside brackets: `a=[1,2],b=3` -> [`a=[1,2]`, `b=3`]."""
    items, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    items.append(current)
    return items


def parse_config_overrides(text: str | None) -> dict:
    """`hidden_size=96,depths=[2,2,1,1]` -> {"hidden_size": 96, "depths": [2, 2, 1, 1]} (values as JSON, else text).

    The format of transformers' `--config_overrides` (examples/pytorch/language-modeling/run_clm.py), with list
    values, which the from-scratch presets need (widths and depths per stage).
    """
    if not text or not text.strip():
        return {}
    overrides = {}
    for item in split_top_level(text):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier() or not value.strip():
            raise ModelSpecError(f"--config_overrides {printable(text)!r}: {printable(item.strip())!r} is not "
                                 "KEY=VALUE. "
                                 "To fix: write e.g. --config_overrides 'hidden_size=96,depths=[2,2,1,1]'.")
        if key in _OWNED_BY_FLAGS:
            raise ModelSpecError(f"--config_overrides {key}: {_OWNED_BY_FLAGS[key]}")
        overrides[key] = _literal(value.strip())
    return overrides


# Fields another flag (or hfxray itself) owns: overriding them would disagree with the processor or the loss.
_OWNED_BY_FLAGS = {
    **dict.fromkeys(("image_size", "img_size"), "the input size follows the recipe's crop. To fix: use --image_size "
                                                "(and --resize_size) instead."),
    **dict.fromkeys(("num_channels", "in_chans"), "the processor feeds 3-channel images. To fix: leave it out."),
    **dict.fromkeys(("num_labels", "num_classes", "id2label", "label2id", "problem_type"),
                    "the two classes (normal, virus) and their loss are fixed by hfxray. To fix: leave it out."),
}


def _literal(text: str):
    """JSON (`[2,2]`, `0.1`, `true`), Python literals (`False`, `None`), else the text itself."""
    import ast

    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _check_config_keys(config_class, overrides: dict, spec: ModelSpec, preset_fields) -> None:
    """A misspelt key would become a silent extra attribute of a transformers config: refuse it."""
    unknown = sorted(set(overrides) - set(config_class().to_dict()))
    if unknown:
        raise ModelSpecError(f"--config_overrides: {', '.join(unknown)} not a field of {config_class.__name__} "
                             f"({spec.tag}). To fix: use fields of its config.json, e.g. the preset's own: "
                             f"{', '.join(preset_fields)}.")


# Limits on a from-scratch architecture, checked before any memory is allocated: the largest model of the study
# (ViT-B/16 with its R50 hybrid stem) has ~100 M parameters and 12 blocks; BiT-R152x4 has ~940 M and 50 blocks.
MAX_PARAMETERS = 1_000_000_000
MAX_BLOCKS = 256


def _block_count(values: dict) -> int:
    """Blocks an architecture stacks (ViT `num_hidden_layers`, BiT `depths`, timm `depth`), counted before any is
    built: a model of 100,000 blocks takes minutes to build even on the meta device."""
    args = values.get("model_args") if isinstance(values.get("model_args"), dict) else {}
    counts = [values.get("num_hidden_layers"), args.get("depth")]
    depths = values.get("depths")
    if isinstance(depths, (list, tuple)):
        counts.append(sum(d for d in depths if isinstance(d, int)))
    return max([c for c in counts if isinstance(c, int) and not isinstance(c, bool)], default=0)


def _from_scratch(model_class, config_class, values: dict, *, spec: ModelSpec):
    """A randomly initialised model; a config that cannot be built (e.g. overrides that disagree, a zero head or
    group count, an empty list of sizes) or is too large is one line, refused before any weight is allocated."""
    import torch

    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:  # older huggingface_hub: configs were not validated dataclasses
        StrictDataclassError = ValueError  # noqa: N806
    cannot = (ValueError, TypeError, AssertionError, RuntimeError, KeyError, ZeroDivisionError, IndexError,
              AttributeError, OverflowError, StrictDataclassError)
    blocks = _block_count(values)
    if blocks > MAX_BLOCKS:
        raise ModelSpecError(f"{spec.tag} with {blocks} blocks: above hfxray's limit of {MAX_BLOCKS}. To fix: lower "
                             "the depth in --config_overrides.")
    try:
        config = config_class(**values)
        with torch.device("meta"):  # shapes only: the parameter count without allocating a byte
            parameters = sum(p.numel() for p in model_class(config).parameters())
    except cannot as err:
        raise ModelSpecError(f"cannot build {spec.tag} for {spec.image_size} px inputs with this configuration "
                             f"({type(err).__name__}: {excerpt(err, 200)}). To fix: check --image_size and any "
                             "--config_overrides against the model's configuration (e.g. one hidden size per stage "
                             "depth, head and group counts of at least 1).") from None
    if parameters > MAX_PARAMETERS:
        raise ModelSpecError(f"{spec.tag} with these --config_overrides has {parameters / 1e6:,.0f} M parameters "
                             f"(estimated without allocating), above hfxray's limit of {MAX_PARAMETERS / 1e6:,.0f} "
                             "M. To fix: choose smaller sizes in --config_overrides.")
    try:
        return model_class(config)
    except cannot as err:
        raise ModelSpecError(f"cannot build {spec.tag} with this configuration ({type(err).__name__}: "
                             f"{excerpt(err, 200)}). To fix: check --config_overrides.") from None


_SIZES = {"full": 224, "small": 128, "tiny": 64}


def native_image_size(preset: str) -> int:
    """The input size a preset's models are built for (224 full, 128 small, 64 tiny)."""
    return _SIZES[preset]


def get_spec(name: str, preset: str = "full", image_size: int | None = None) -> ModelSpec:
    """Look up a registry entry; `image_size` overrides the preset's input size (e.g. the seed recipe's 128 px)."""
    family = adapter_for_name(name)
    if family is None:
        raise ModelSpecError(f"unknown model {name!r}. To fix: choose one of {', '.join(MODEL_NAMES)}")
    if preset not in PRESETS:
        raise ModelSpecError(f"unknown preset {preset!r}. To fix: choose one of {', '.join(PRESETS)}")
    if preset != "full" and (name != family.name or preset not in family.random_presets):
        raise ModelSpecError(f"{name} exists only as the pretrained {family.pretrained[name]}. To fix: use --model "
                             f"{family.name} for --preset {preset}")
    return ModelSpec(name=name, preset=preset, checkpoint=family.pretrained[name] if preset == "full" else None,
                     image_size=image_size or _SIZES[preset], family=family)


def create_model(name: str, preset: str = "full", image_size: int | None = None, resize_size: int | None = None,
                 checkpoint: str | None = None, config_overrides: str | None = None,
                 resize_mode: str = "shortest_edge"):
    """Build (model, processor, spec). `checkpoint` replaces the registry's Hub id (e.g. a downloaded folder);
    `config_overrides` (`parse_config_overrides`) changes a from-scratch preset's architecture."""
    spec = get_spec(name, preset, image_size)
    overrides = parse_config_overrides(config_overrides)
    if overrides and spec.checkpoint is not None:
        raise ModelSpecError(f"--config_overrides changes the architecture; {spec.tag} loads pretrained weights of a "
                             "fixed one. To fix: use --preset small or tiny (models trained from scratch).")
    request = BuildRequest(
        name=name, preset=preset, image_size=spec.image_size, checkpoint=checkpoint, hub_id=spec.checkpoint,
        overrides=overrides, labels=_labels(), from_pretrained=_from_pretrained,
        from_scratch=partial(_from_scratch, spec=spec),
        check_config_keys=lambda config_class, preset_fields: _check_config_keys(config_class, overrides, spec,
                                                                                 preset_fields))
    family = spec.family
    model = family.load_pretrained(request) if preset == "full" else family.build_random(request)
    processor = build_processor(spec.image_size, resize_size, resize_mode=resize_mode, **family.normalisation)
    return model, processor, spec


def check_labels(config, name: str) -> None:
    """Refuse a model whose outputs are not labelled as hfxray's (0 normal, 1 virus).

    Evaluation, calibration and explanations read output 1 as the probability of virus; a model labelled otherwise
    (swapped, other names, more classes) would get another model's metrics, so it is refused rather than guessed.
    """
    found = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    if found != ID2LABEL:
        raise ModelLoadError(f"{printable(str(name))}: its outputs are labelled {found}, not {ID2LABEL} as hfxray's "
                             "models are, so its scores cannot be read as normal/virus. To fix: use a model trained "
                             "by hfxray (or, if its outputs do mean 0 normal and 1 virus, set id2label and label2id "
                             "in its config.json).")


def load_trained(model_dir: str, **model_kwargs):
    """(model, processor) of a trained run folder or Hub id, with one clear error when it cannot be loaded."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = _from_pretrained(AutoModelForImageClassification.from_pretrained, model_dir, **model_kwargs)
    check_labels(model.config, model_dir)
    processor = _from_pretrained(AutoImageProcessor.from_pretrained, model_dir, weights=False)
    return model, processor
