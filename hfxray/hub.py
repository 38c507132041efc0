"""Publishing a run folder on the Hugging Face Hub: model card, access check and a curated upload.

A run folder holds more than a model (checkpoints, TensorBoard events, a pickled training_args.bin). The Hub repo
gets only what `pipeline("image-classification", model=REPO_ID)` and a reader need, with a card whose numbers are
read from the run's own files (args.yaml, *_results.json, the prepared manifest), never typed in.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
from collections import Counter
from pathlib import Path

import yaml
from dataclasses import dataclass, field

from .data import CLASS_NAMES, MANIFEST_NAME, kept_counts, read_manifest
from .dataset_repo import dataset_repo_id
from .env import hub_offline, looks_local
from .errors import HfxrayError
from .families import ADAPTERS, UnsupportedModelError, adapter_for
from .runs import RunFolder

# The allow-list: a Hub repo gets these top-level files (README.md is written by `write_model_card`), plus the
# top-level `*_results.json` and the reliability diagrams beside them. Nothing else goes up: explanation maps and
# figures (`hfxray explain --out`) show patients' X-rays, so a PNG someone put in the run folder stays local.
# ood.*: the out-of-distribution check (hfxray.scope), statistics of the training images' features, no image.
HUB_FILES = (RunFolder.CONFIG, RunFolder.WEIGHTS, RunFolder.PROCESSOR, RunFolder.CARD, RunFolder.ARGS,
             RunFolder.CALIBRATION, "ood.json", "ood.safetensors")
HUB_PATTERNS = ("*_results.json", "*_reliability.png")
REQUIRED_FILES = (RunFolder.CONFIG, RunFolder.WEIGHTS)
# Belt and braces on top of the explicit allow-list: never checkpoints, TensorBoard events or pickles.
NEVER_UPLOAD = ["checkpoint-*", "checkpoint-*/**", "runs/**", "*.bin", "*.pkl", "*.pickle", "*.pt", "*.pth", "*.ckpt"]
# test_results.json key -> (model-index metric type, shown name)
CARD_METRICS = {
    "test_accuracy": ("accuracy", "Accuracy"),
    "test_auroc": ("roc_auc", "AUROC"),
    "test_sensitivity": ("recall", "Sensitivity (recall of virus)"),
    "test_specificity": ("specificity", "Specificity (recall of normal)"),
    "test_f1": ("f1", "F1 (virus)"),
    "test_ece": ("expected_calibration_error", "ECE (15 bins, top-label, as shipped)"),
}
BASE_TAGS = ["image-classification", "medical-imaging", "chest-x-ray", "pneumonia", "coronahack", "hfxray"]
KAGGLE_URL = "https://www.kaggle.com/datasets/praveengovi/coronahack-chest-xraydataset"
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class HubError(HfxrayError):
    """A run cannot be published; the message says what to change and never contains a token."""


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


@dataclass(frozen=True)
class CardFacts:
    """What a model card states about its run, gathered once: handed over in memory by the run that just finished
    (`hfxray.workflow.run`), or read back from a run folder (`hfxray push`, a card rewritten for an older run).

    `args`: args.yaml; `config`, `processor`: the model's and processor's dicts; `train_results`,
    `test_results`: the `*_results.json` contents (Trainer-prefixed keys); `calibration`: calibration.json.
    """

    args: dict
    config: dict
    processor: dict = field(default_factory=dict)
    train_results: dict = field(default_factory=dict)
    test_results: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)

    @classmethod
    def read(cls, run_dir: str | os.PathLike) -> "CardFacts":
        """The facts of a finished run folder, or HubError saying what is missing."""
        run_dir = Path(run_dir)
        args, config = _read_run(run_dir)
        folder = RunFolder(run_dir)
        return cls(args=args, config=config, processor=_read_json(run_dir / RunFolder.PROCESSOR),
                   train_results=_read_json(folder.train_results), test_results=_read_json(folder.test_results),
                   calibration=_read_json(folder.calibration))


def _read_run(run_dir: Path) -> tuple[dict, dict]:
    """(args.yaml, config.json) of a run folder, or HubError saying what is missing."""
    missing = [name for name in (*REQUIRED_FILES, RunFolder.ARGS) if not (run_dir / name).is_file()]
    if missing:
        raise HubError(f"{run_dir}: not a finished run folder (missing {', '.join(missing)}). To fix: pass the "
                       "--output_dir of a completed `hfxray train` run.")
    return yaml.safe_load((run_dir / RunFolder.ARGS).read_text()) or {}, _read_json(run_dir / RunFolder.CONFIG)


def _base_model(args: dict) -> str | None:
    """The pretrained Hub checkpoint, only for the `full` preset and only when it is a Hub id, not a local folder."""
    checkpoint = args.get("pretrained_checkpoint")
    if args.get("preset") != "full" or not checkpoint or not HUB_ID.fullmatch(checkpoint):
        return None
    return None if looks_local(checkpoint) else checkpoint


def _test_metrics(results: dict) -> dict[str, float]:
    """The card metrics present and finite in test_results.json (a NaN AUROC of a one-class split is left out)."""
    return {key: float(results[key]) for key in CARD_METRICS
            if isinstance(results.get(key), (int, float)) and math.isfinite(results[key])}


def _split_counts(args: dict) -> tuple[dict[str, Counter], int, int] | None:
    """(split -> class -> images, skipped rows, patient groups in test and train/validation) from the manifest."""
    data_dir = args.get("data_dir")
    if not data_dir or not (Path(data_dir) / MANIFEST_NAME).is_file():
        return None
    rows = read_manifest(data_dir)
    kept = [row for row in rows if row["status"] == "kept"]
    test_groups = {row["patient_group"] for row in kept if row["split"] == "test"}
    other_groups = {row["patient_group"] for row in kept if row["split"] != "test"}
    return kept_counts(rows), len(rows) - len(kept), len(test_groups & other_groups)


def _optimizer_text(args: dict) -> str:
    name = str(args.get("optim", "?"))
    if name.startswith("sgd"):
        extra = args.get("optim_args") or "no momentum"
    else:
        extra = f"betas ({args.get('adam_beta1')}, {args.get('adam_beta2')})"
    return f"{name} ({extra}), weight decay {args.get('weight_decay')} on non-bias weights"


def schedule_text(args: dict) -> str:
    """The learning-rate schedule a run used, from its args.yaml (hfxray's own, or the Trainer's)."""
    schedule = args.get("schedule")
    if schedule and schedule != "trainer":
        return f"{schedule} (hfxray/recipes.py)" + (f", warm-up {args.get('warmup_steps')}"
                                                     if schedule == "bit_hyperrule" else "")
    warmup = args.get("warmup_steps") or 0
    warmup_text = f"{warmup:g} of the steps" if 0 < warmup < 1 else f"{warmup:g} steps"
    return f"{args.get('lr_scheduler_type')} (warm-up {warmup_text})"


def _recipe_rows(args: dict, facts: CardFacts) -> list[tuple[str, object]]:
    processor = facts.processor
    crop = (processor.get("crop_size") or {}).get("height", args.get("image_size"))
    size = processor.get("size") or {}
    # `resize_mode: square` saves a {"height", "width"} size: every image squashed to it, aspect not kept.
    square = bool(size.get("height") and size.get("width") and not size.get("shortest_edge"))
    resize = f"{size.get('height')} x {size.get('width')}" if square else size.get("shortest_edge",
                                                                                    args.get("resize_size"))
    resized = f"resized to {resize} px (aspect not kept)" if square else f"shortest edge resized to {resize} px"
    length = (f"{args['max_steps']} steps" if (args.get("max_steps") or -1) > 0
              else f"{args.get('num_train_epochs', 0):g} epoch(s)")
    steps = facts.train_results.get("global_step")
    batch = ((args.get("per_device_train_batch_size") or 0) * (args.get("world_size") or 1)
             * (args.get("gradient_accumulation_steps") or 1))
    clip = args.get("max_grad_norm")
    zoom = args.get("max_zoom") or 1.0
    return [
        ("recipe", f"`{args.get('recipe')}`"),
        ("model", f"`{args.get('model_tag') or args.get('model')}`"),
        ("optimizer", _optimizer_text(args)),
        ("learning rate", args.get("learning_rate")),
        ("schedule", schedule_text(args)),
        ("length", length + (f", {steps} optimizer steps" if steps else "")),
        ("effective batch size", batch),
        ("label smoothing", args.get("label_smoothing_factor")),
        ("image size", f"{resized}, center crop {crop} x {crop} px, scaled to [-1, 1]"
         if list(processor.get("image_mean") or ()) == list(processor.get("image_std") or ()) == [0.5] * 3
         else f"resize {resize} px{' (aspect not kept)' if square else ''}, crop {crop} px"
         + (f", normalised with mean {processor['image_mean']} and std {processor.get('image_std')}"
            if processor.get("image_mean") else "")),
        ("augmentation", ", ".join([f"random zoom up to {zoom}x" if zoom > 1 else "no zoom",
                                    "horizontal flips" if args.get("hflip") else "no flips"])),
        ("gradient clipping", f"max norm {clip}" if clip else "none"),
        ("precision", "bf16" if args.get("bf16") else "fp16" if args.get("fp16") else "fp32"),
        ("seed", args.get("seed")),
    ]


def _per_source_card(results: dict) -> list[str]:
    """Per-source metrics, "trained on X, tested on Y" and the source shortcut check, when the data had sources."""
    from .evaluation import shortcut_message

    by_source = results.get("test_by_source")
    if not by_source:
        return []
    sources = results.get("test_sources") or {}
    trained = ", ".join(f"{name} ({n})" for name, n in (sources.get("train") or {}).items()) or "-"
    lines = [f"\n### Per source (external validation)\n\nTrained on {trained}; tested on "
             + (", ".join(f"{name} ({n})" for name, n in (sources.get("test") or {}).items()) or "-") + ".\n",
             "| test source | n (virus) | accuracy (95% CI) | AUROC (95% CI) |", "|---|---:|---|---|"]
    for name, report in by_source.items():
        cells = []
        for metric in ("accuracy", "auroc"):
            value, (low, high) = report.get(metric), (report.get("ci95") or {}).get(metric) or (None, None)
            cells.append("-" if value is None else f"{value:.3f}" + (f" ({low:.3f}-{high:.3f})"
                                                                     if low is not None and high is not None else ""))
        lines.append(f"| {name} | {report.get('n')} ({report.get('n_positive')}) | {cells[0]} | {cells[1]} |")
    check = results.get("test_source_shortcut")
    if check:
        lines.append("\n" + shortcut_message(check) + ".")
    return lines


def _data_section(args: dict, dataset_id: str | None = None) -> str:
    hub_text = (f"The prepared set is the Hub dataset [`{dataset_id}`](https://huggingface.co/datasets/{dataset_id}) "
                "(`hfxray data push`), which the card's `datasets` and evaluation entries name."
                if dataset_id else
                "This data is not a Hugging Face Hub dataset, so the card declares no `datasets` id; the evaluation "
                "entry names the `imagefolder` loader the images were read with (`hfxray data push` publishes it).")
    lines = [
        f"Binary `normal` (0) vs `virus` (1) labels derived from the [Kaggle CoronaHack Chest X-Ray dataset]"
        f"({KAGGLE_URL}), which combines the paediatric Kermany et al. (2018) images with adult COVID-19/SARS images "
        f"of the Cohen et al. (2020) collection. Bacterial pneumonia and other findings are excluded. {hub_text}",
        "",
        "**Split.** The source's TEST split is kept as the test set; the validation split is carved out of TRAIN "
        "by patient group (Kermany patient number from the file name), so no patient group is in both train and "
        "validation. Images without a patient id in their name (the COVID-19 figures) count as their own group.",
        "",
    ]
    found = _split_counts(args)
    if found:
        counts, skipped, shared = found
        lines += ["| split | " + " | ".join(CLASS_NAMES) + " | total |",
                  "|---|" + "---:|" * (len(CLASS_NAMES) + 1)]
        for split in ("train", "validation", "test"):
            row = counts.get(split, Counter())
            lines.append(f"| {split} | " + " | ".join(str(row[c]) for c in CLASS_NAMES) + f" | {sum(row.values())} |")
        lines += ["", f"Counts from the prepared folder's manifest; {skipped} source rows were skipped (other "
                      "classes or unreadable files, each with its reason in the manifest)."]
        if shared:
            lines.append(f"**Warning:** {shared} patient group(s) of the test set also appear in train/validation "
                         "(the source's own TRAIN/TEST split shares them).")
    else:
        lines.append("Images used: " + ", ".join(f"{split} {args.get(f'{split}_size', '?')}"
                                                 for split in ("train", "validation", "test"))
                     + " (from args.yaml; the prepared manifest was not found).")
    if args.get("max_train_samples"):
        lines.append(f"Training used only the first {args.get('train_size')} training images "
                     f"(--max_train_samples {args['max_train_samples']}).")
    return "\n".join(lines)


def _calibration_text(decision: dict, config: dict) -> str:
    reason = f" ({decision['reason']})" if decision.get("reason") else ""
    if config.get("folded_temperature"):
        return (f"A temperature T = {config['folded_temperature']:.4g} fitted on the validation split is folded "
                f"into the classifier weights{reason}, so `pipeline` scores are temperature-scaled as they are.")
    return f"Scores are the plain softmax of the trained model: no temperature is folded in{reason}."


def _listed(names) -> str:
    """`a, b and c`."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _family(config: dict):
    """The run's family adapter, or None for a model type hfxray does not know (the card then names none)."""
    try:
        return adapter_for(config)
    except UnsupportedModelError:
        return None


def _card_body(run_dir: Path, facts: CardFacts, metrics: dict[str, float], example_id: str,
               dataset_id: str | None = None) -> str:
    from .metrics import chance_sentence, chance_verdict

    args, config = facts.args, facts.config

    base_model = _base_model(args)
    family = _family(config)
    preset = args.get("preset")
    if base_model:
        init = (f"Fine-tuned from [`{base_model}`](https://huggingface.co/{base_model}) (ImageNet-21k "
                "pre-training) with a new two-class head.")
    elif preset == "full":
        init = ("Fine-tuned from pretrained weights read from a local folder, not a Hub id, so the card declares no "
                "`base_model`.")
    else:
        init = (f"Trained from random initialisation (preset `{preset}`): there is no pretrained base model, so the "
                "card declares no `base_model`."
                + (" The tiny preset exists for tests and demos; its scores say nothing about the method."
                   if preset == "tiny" else ""))
    results = facts.test_results
    n, n_positive = results.get("test_n"), results.get("test_n_positive")
    chance = chance_sentence({key.removeprefix("test_"): value for key, value in results.items()},
                             results.get("test_ci95"))
    if metrics:
        intervals = results.get("test_ci95") or {}
        unit = results.get("test_bootstrap_unit", "image")
        methods = results.get("test_ci95_method") or {}
        evaluation = [f"| metric (test split) | value | 95% CI ({unit}-level) |", "|---|---:|---|"]
        for key, value in metrics.items():
            low, high = intervals.get(key.removeprefix("test_")) or (None, None)
            interval = f"{low:.3f}-{high:.3f}" if low is not None and high is not None else "-"
            if key == "test_ece" and results.get("test_ece_debiased") is not None:
                interval = (f"noise floor {results['test_ece_noise_floor']:.3f}; debiased "
                            f"{results['test_ece_debiased']:.3f}, {interval}")
            method = methods.get(key.removeprefix("test_"))
            evaluation.append(f"| {CARD_METRICS[key][1]} | {value:.4f} | {interval}"
                              + (f" ({method})" if method and interval != "-" else "") + " |")
        if results.get("test_ece_before_folding") is not None:
            evaluation.append(f"\nECE of the same model before the temperature was folded in: "
                              f"{results['test_ece_before_folding']:.4f}.")
        if n:
            evaluation.append(f"\nn = {n} test images" + (f" ({n_positive} virus)." if n_positive is not None
                                                           else "."))
        evaluation += _per_source_card(results)
        if chance:
            evaluation.insert(0, f"**{chance}**\n")
    else:
        evaluation = ["No test_results.json in the run folder: this model was not evaluated."]
    small = f"n = {n} test images" if n else "A few hundred test images at most"
    accuracy_ci = (results.get("test_ci95") or {}).get("accuracy")
    if accuracy_ci and None not in accuracy_ci:
        small += (f"; the 95% interval of the accuracy ({results.get('test_bootstrap_unit', 'image')}-level) is "
                  f"{accuracy_ci[0]:.2f}-{accuracy_ci[1]:.2f}")
    small += ". One run, one seed: differences of a few points between models are noise."
    figures = [name for name in hub_files(run_dir) if name.endswith(".png")]  # aggregate figures only, never maps
    sections = [
        f"# {args.get('model_tag') or run_dir.name}: chest X-ray classifier, normal vs viral pneumonia",
        (f"{family.card_text} " if family else "") + f"{init} Trained with hfxray on chest X-rays labelled `normal` or "
        "`virus`."
        + (f" **This model is {chance_verdict(results.get('test_ci95'))} on its test split** (see Evaluation)."
           if chance else ""),
        "## Intended use",
        "Research and teaching: reproducing and comparing "
        f"{_listed(other.display_name for other in ADAPTERS.values())} fine-tuning on chest X-rays, and studying "
        "calibration and explanations. **Not a medical device**; not for diagnosis, triage or any clinical decision.",
        "## How to use",
        f'```python\nfrom transformers import pipeline\nprint(pipeline("image-classification", model="{example_id}")'
        '("chest_xray.jpeg"))\n```',
        _calibration_text(facts.calibration, config),
        "## Training recipe",
        "| setting | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in _recipe_rows(args, facts)),
        "## Data and the patient-level split",
        _data_section(args, dataset_id),
        "## Evaluation",
        "\n".join(evaluation),
        *(["## Figures", "\n".join(f"![{Path(f).stem}]({f})" for f in figures)] if figures else []),
        "## Limitations",
        "\n".join([
            "- **Paediatric, single site.** The normal and most viral images come from Kermany et al. (children "
            "aged 1-5, one hospital in Guangzhou). Nothing is known about adults, other hospitals or other scanners.",
            "- **Shortcut risk.** The COVID-19/SARS images in the `virus` class are adult X-rays, several cropped "
            "from figures in papers (other resolution, borders, annotations). A model can tell them apart by source, "
            "age or image style rather than by disease; good scores do not show that it learned pneumonia.",
            f"- **Small test set.** {small}",
            "- **Two classes only.** Bacterial pneumonia and other findings were excluded from training; the model "
            "will still answer `normal` or `virus` for them.",
            "- **Not a medical device.** Outputs must not inform the care of any patient.",
        ]),
        "## License",
        "Training images: Kermany et al. (CC BY 4.0) and the Cohen et al. COVID-19 collection, whose images carry "
        "their own licenses (several CC BY-NC-SA or CC BY-NC-ND, some none stated). The code and the pretrained base "
        "checkpoints are Apache-2.0. Check these terms before any reuse beyond research.",
        "## Citations",
        "- Kermany D. S. et al. Identifying Medical Diagnoses and Treatable Diseases by Image-Based Deep Learning. "
        "Cell 172(5), 2018. doi:10.1016/j.cell.2018.02.010\n"
        "- Cohen J. P., Morrison P., Dao L. COVID-19 image data collection. arXiv:2003.11597, 2020.",
    ]
    return "\n\n".join(str(section) for section in sections) + "\n"


def write_model_card(run_dir: str | os.PathLike, repo_id: str | None = None, license_id: str = "other",
                     facts: CardFacts | None = None) -> Path:
    """Write run_dir/README.md: Hub metadata (via huggingface_hub's ModelCardData) and a card of the run's facts.

    `facts`: what the run that just finished holds in memory; without them they are read from the run folder.
    `license_id` defaults to "other" because the training images carry mixed, partly non-commercial licenses
    (explained in the card); pass a Hub license id once the terms are settled.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    run_dir = Path(run_dir)
    facts = facts or CardFacts.read(run_dir)
    args, config = facts.args, facts.config
    metrics = _test_metrics(facts.test_results)
    name = (repo_id or run_dir.resolve().name).split("/")[-1]
    split_name = "CoronaHack chest X-ray, normal vs virus, patient-level split (test)"
    # The Hub dataset the prepared folder was pushed to, or read from (hfxray.dataset_repo's record), if any.
    dataset_id = dataset_repo_id(args.get("data_dir"))
    eval_results = [
        EvalResult(task_type="image-classification", task_name="Image Classification",
                   dataset_type=dataset_id or "imagefolder", dataset_name=dataset_id or split_name,
                   dataset_split="test", metric_type=CARD_METRICS[key][0],
                   metric_name=CARD_METRICS[key][1], metric_value=value)
        for key, value in metrics.items()
    ]
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification",
        base_model=_base_model(args),
        datasets=[dataset_id] if dataset_id else None,
        license=license_id,
        license_name="mixed-training-data-licenses" if license_id == "other" else None,
        tags=BASE_TAGS + list(family.card_tags if (family := _family(config)) else ()),
        model_name=name,
        eval_results=eval_results or None,
    )
    body = _card_body(run_dir, facts, metrics, repo_id or str(run_dir), dataset_id)
    card = ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}")
    path = run_dir / RunFolder.CARD
    card.save(path)
    return path


def _scrub(text: str, token: str | None) -> str:
    """First line of an error message with the token masked (httpx errors may echo request details)."""
    line = (text.strip().splitlines() or [""])[0][:300]
    return line.replace(token, "***") if token else line


def check_hub_access(token: str | None = None) -> str:
    """Fail fast, before any training, when a push cannot work; return the Hub user name.

    Checks offline mode, that a token exists (argument, HF_TOKEN or `hf auth login`), that the Hub answers and
    accepts it, and that it is not read-only. The token is never printed: messages are scrubbed.
    """
    from huggingface_hub import HfApi, constants, get_token

    problems = []
    if hub_offline():
        problems.append("the Hugging Face Hub is switched off (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set). "
                        "To fix: unset it on a machine with network access")
    try:
        token = token or get_token()
    except Exception as err:  # e.g. a failed OIDC exchange: only its type is shown, its text may hold secrets
        raise HubError(f"cannot read the Hugging Face token ({type(err).__name__}). To fix: run `hf auth login` "
                       "or set HF_TOKEN.") from None
    if not token:
        problems.append("no Hugging Face token found. To fix: run `hf auth login` or set HF_TOKEN to a token with "
                        "write access (https://huggingface.co/settings/tokens)")
    if problems:
        raise HubError("cannot push to the Hub: " + "; ".join(problems) + ".")
    try:
        info = HfApi().whoami(token=token)
    except Exception as err:  # httpx transport errors and HfHubHTTPError alike
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status == 401:
            raise HubError("the Hub rejected the token (401 Unauthorized). To fix: create a new token with write "
                           "access at https://huggingface.co/settings/tokens and run `hf auth login`.") from None
        raise HubError(f"cannot reach the Hugging Face Hub at {constants.ENDPOINT} ({type(err).__name__}: "
                       f"{_scrub(str(err), token)}). To fix: check the network or proxy (HF_ENDPOINT).") from None
    if ((info.get("auth") or {}).get("accessToken") or {}).get("role") == "read":
        raise HubError("the Hugging Face token is read-only. To fix: create a token with write access at "
                       "https://huggingface.co/settings/tokens and run `hf auth login`.")
    return info.get("name", "")


def prepare_push_to_hub(training_args) -> str | None:
    """With --push_to_hub: check Hub access before training and return the full repo id to push to; else None.

    The repo id is `hub_model_id` (or the output folder's name, as the Trainer does), prefixed with the user's
    namespace when it has none.
    """
    if not training_args.push_to_hub:
        return None
    try:
        user = check_hub_access(training_args.hub_token)
    except HubError as err:
        raise HubError(f"{err} Or drop --push_to_hub and publish the run later with `hfxray push "
                       f"{training_args.output_dir} REPO_ID`.") from None
    name = training_args.hub_model_id or Path(training_args.output_dir).absolute().name
    return name if "/" in name else f"{user}/{name}"


def hub_files(run_dir: str | os.PathLike) -> list[str]:
    """The run folder's files that belong in a Hub repo (the allow-list), as sorted names relative to run_dir.

    Top level only and no symbolic links: a link could point at anything, and sub-folders are where explanation maps
    land.
    """
    run_dir = Path(run_dir)
    names = {name for name in HUB_FILES if (run_dir / name).is_file()}
    names |= {p.name for pattern in HUB_PATTERNS for p in run_dir.glob(pattern) if p.is_file()}
    return sorted(name for name in names if not (run_dir / name).is_symlink())


def planned_files(run_dir: str | os.PathLike) -> list[str]:
    """What `push_run` would upload, without Hub access or writing anything (the card is written at push)."""
    _read_run(Path(run_dir))
    return sorted({*hub_files(run_dir), RunFolder.CARD})


def held_back(run_dir: str | os.PathLike, files: list[str]) -> int:
    """How many files of the run folder (checkpoints and logs included) stay local."""
    run_dir = Path(run_dir)
    return sum(1 for p in run_dir.rglob("*") if p.is_file() and p.relative_to(run_dir).as_posix() not in files)


def _refuse_token_leak(run_dir: Path, files: list[str], token: str) -> None:
    for name in files:
        if name.endswith((".json", ".yaml", ".md")) and token in (run_dir / name).read_text(errors="ignore"):
            raise HubError(f"{run_dir / name} contains the Hugging Face token; refusing to upload it. To fix: "
                           "remove the token from that file and revoke it.")


def push_run(run_dir: str | os.PathLike, repo_id: str, token: str | None = None, private: bool = False,
             license_id: str = "other", announce=None) -> list[str]:
    """Check access, write the card, create the repo if needed and upload exactly `hub_files(run_dir)`.

    `announce(files)` is called with the list before anything is sent. Returns the uploaded paths. Checkpoints,
    TensorBoard events, training_args.bin, pickles and explanation maps stay local.
    """
    from huggingface_hub import HfApi, get_token

    run_dir = Path(run_dir)
    _read_run(run_dir)
    check_hub_access(token)
    token = token or get_token()
    write_model_card(run_dir, repo_id=repo_id, license_id=license_id)
    files = hub_files(run_dir)
    _refuse_token_leak(run_dir, files, token)
    if announce is not None:
        announce(files)
    api = HfApi()
    try:
        api.create_repo(repo_id, token=token, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=run_dir, allow_patterns=[glob.escape(f) for f in files],
                          ignore_patterns=list(NEVER_UPLOAD), token=token,
                          commit_message=f"Upload {run_dir.name} with hfxray")
    except Exception as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        hint = ("the token may lack write access to this namespace. To fix: use your own user or an organisation "
                "you can write to" if status in (401, 403) else "To fix: check REPO_ID (owner/name) and the network")
        raise HubError(f"upload to {repo_id} failed ({type(err).__name__}: {_scrub(str(err), token)}); "
                       f"{hint}.") from None
    return files
