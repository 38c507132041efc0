"""`hfxray explain --sanity`: the randomisation checks of `hfxray.explain.sanity` on a user's own run and images.

Writes into the output folder `<name>.sanity.md` (a table per method and the verdicts), `<name>.sanity.png` (the
cascading curve: similarity to the trained maps after each layer is re-initialised, with the random-vs-random
baseline) and `<name>.sanity.json` (every number). The planted-marker positive control needs training and lives
in the tests (`tests/test_explain_control.py`); docs/explanations.md says what each check can and cannot show.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..imaging import ImageProblem, expand_paths, load_rgb
from .sanity import CascadeResult, Similarity, cascading_randomisation, verdict

DEFAULT_IMAGES = 16
REPORT_TITLE = "# Explanation sanity report"


def pick_images(paths: Sequence[Path], count: int) -> list[Path]:
    """`count` of `paths` spread evenly over the sorted list (class folders sort together, so both classes come)."""
    paths = sorted(paths)
    if len(paths) <= count:
        return list(paths)
    return [paths[int(index)] for index in np.unique(np.linspace(0, len(paths) - 1, count).round())]


def run_images(model_dir: Path) -> list[Path]:
    """The test split of the prepared folder a run was trained on (from its args.yaml), or [] when not found."""
    import yaml

    try:
        args = yaml.safe_load((Path(model_dir) / "args.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []
    data_dir = args.get("data_dir")
    test = Path(data_dir) / "test" if data_dir else None
    return expand_paths([test]) if test is not None and test.is_dir() else []


def _explainers(model, methods: Sequence[str], pixel_values: torch.Tensor) -> dict[str, Callable]:
    from . import gradcam_map, gradcam_with_status, rollout_map

    explainers = {}
    if "gradcam" in methods:
        # Every model explains the trained model's predicted class: otherwise a randomised model's maps would
        # answer another question.
        classes = gradcam_with_status(model, pixel_values).classes
        explainers["gradcam"] = lambda m, x: gradcam_map(m, x, classes)
    if "rollout" in methods:
        explainers["rollout"] = rollout_map
    return explainers


def sanity_check(model_dir: str | os.PathLike, out_dir: str | os.PathLike, images: Sequence[str | os.PathLike] = (),
                 count: int = DEFAULT_IMAGES, permuted_dir: str | os.PathLike | None = None,
                 methods: Sequence[str] | None = None, seed: int = 0,
                 progress: Callable[[str], None] = lambda line: None,
                 on_skip: Callable[[Path, str], None] | None = None) -> dict:
    """Run the checks and write the report; returns what `<name>.sanity.json` holds."""
    from . import ExplainError, _origin, check_applicable, check_overwrite, load_model

    model_dir = Path(model_dir)
    model, processor = load_model(model_dir)
    name = model_dir.resolve().name
    if methods is None:
        methods = [method for method in ("gradcam", "rollout") if _applies(model, method)]
    for method in methods:
        check_applicable(model, method)
    permuted = None
    if permuted_dir is not None:
        permuted, _ = load_model(permuted_dir)
        if permuted.config.to_dict().get("model_type") != model.config.model_type:
            raise ExplainError(f"{permuted_dir} is not the same kind of model as {model_dir}. To fix: train the "
                               "permuted-label run with the same --model and --preset")
    paths = expand_paths(images) if images else run_images(model_dir)
    if not paths:
        raise ExplainError(f"no images to check {model_dir} on: its args.yaml names no prepared folder with a test "
                           "split here. To fix: add image files or folders after the options")
    out = Path(out_dir)
    origin = _origin(str(model_dir.resolve()), "sanity")
    report, figure, numbers = (out / f"{name}.sanity{suffix}" for suffix in (".md", ".png", ".json"))
    check_overwrite([report, figure, numbers], origin)
    chosen, pixels = [], []
    for path in pick_images(paths, count):
        try:
            pixels.append(processor(images=load_rgb(path), return_tensors="pt")["pixel_values"])
            chosen.append(path)
        except ImageProblem as problem:
            if on_skip is not None:
                on_skip(path, str(problem))
    if not pixels:
        raise ExplainError("none of the images could be read. To fix: pass readable image files")
    pixel_values = torch.cat(pixels)
    progress(f"sanity: {name}, {len(chosen)} images, methods {', '.join(methods)}")
    results: dict[str, dict] = {}
    curves: dict[str, CascadeResult] = {}
    for method, explain_fn in _explainers(model, methods, pixel_values).items():
        def step(layer: str, method=method) -> None:
            progress(f"sanity {method}: re-initialising {layer}" if "baseline" not in layer
                     else f"sanity {method}: {layer}")

        cascade = cascading_randomisation(model, pixel_values, explain_fn, seed=seed, on_step=step)
        curves[method] = cascade
        passed, line = verdict(cascade.final, cascade.baseline)
        entry = {"steps": [{"layer": layer, **_numbers(similarity), "degenerate_maps": degenerate}
                           for layer, similarity, degenerate in zip(cascade.steps, cascade.similarity,
                                                                    cascade.degenerate)],
                 "baseline": _numbers(cascade.baseline), "cascading": {"passed": passed, "verdict": line}}
        if permuted is not None:
            progress(f"sanity {method}: maps of the permuted-label model")
            similarity = Similarity.of(explain_fn(model, pixel_values), explain_fn(permuted, pixel_values))
            passed, line = verdict(similarity, cascade.baseline, removed="the labels",
                                   after="training on permuted labels")
            entry["data_randomisation"] = {**_numbers(similarity), "passed": passed, "verdict": line}
        results[method] = entry
    summary = {"model": origin["hfxray-model"], "method": "sanity", "name": name, "images": [str(p) for p in chosen],
               "permuted_model": str(Path(permuted_dir).resolve()) if permuted_dir else None, "seed": seed,
               "statistic": "mean |Spearman| over images (SSIM beside it); baseline: two random re-initialisations",
               "results": results}
    out.mkdir(parents=True, exist_ok=True)
    _figure(curves, name, len(chosen), figure, origin)
    numbers.write_text(json.dumps(summary, indent=1) + "\n")
    report.write_text(_markdown(summary, figure.name))
    progress(f"sanity: report -> {report}")
    return summary


def _applies(model, method: str) -> bool:
    from . import ExplainError, check_applicable

    try:
        check_applicable(model, method)
    except ExplainError:
        return False
    return True


def _numbers(similarity: Similarity) -> dict:
    return {"spearman": round(similarity.mean_spearman, 4), "spearman_se": round(similarity.spearman_se(), 4),
            "ssim": round(similarity.mean_ssim, 4)}


def _markdown(summary: dict, figure_name: str) -> str:
    from .sanity import SHARED_BAR, VERDICT_MARGIN

    lines = [REPORT_TITLE, "", f"Model: `{summary['name']}`, {len(summary['images'])} images. Statistic: mean "
             "|Spearman| between each image's map and the trained model's map (± standard error over the images), "
             "SSIM beside it. Baseline: the same between two independent random re-initialisations. A check passes "
             f"when the similarity is at most the baseline + {VERDICT_MARGIN} and the baseline is below "
             f"{SHARED_BAR}.", "", f"![cascading randomisation]({figure_name})", ""]
    for method, entry in summary["results"].items():
        lines += [f"## {method}", "", "| re-initialised (cumulative, top first) | mean \\|Spearman\\| | SSIM | "
                  "degenerate maps |", "|---|---|---|---|"]
        for row in entry["steps"]:
            lines.append(f"| {row['layer']} | {row['spearman']:.2f} ± {row['spearman_se']:.2f} | {row['ssim']:.2f} | "
                         f"{row['degenerate_maps']} |")
        base = entry["baseline"]
        lines.append(f"| *random vs random (baseline)* | {base['spearman']:.2f} ± {base['spearman_se']:.2f} | "
                     f"{base['ssim']:.2f} | |")
        data = entry.get("data_randomisation")
        if data:
            lines.append(f"| *permuted-label model vs trained* | {data['spearman']:.2f} ± {data['spearman_se']:.2f} | "
                         f"{data['ssim']:.2f} | |")
        lines += ["", f"- cascading randomisation: **{'pass' if entry['cascading']['passed'] else 'FAIL'}** — "
                  f"{entry['cascading']['verdict']}"]
        if data:
            lines.append(f"- data randomisation: **{'pass' if data['passed'] else 'FAIL'}** — {data['verdict']}")
        else:
            lines.append("- data randomisation: not run (pass `--permuted-model RUN`, a run trained on permuted "
                         "labels)")
        lines.append("")
    return "\n".join(lines)


def _figure(curves: dict[str, CascadeResult], name: str, images: int, path: Path, origin: dict) -> None:
    from .figures import _new_figure, _save

    figure = _new_figure(7.5, 4.4)
    axis = figure.subplots()
    colours = {"gradcam": "#1f77b4", "rollout": "#d62728"}
    for method, cascade in curves.items():
        x = np.arange(len(cascade.steps) + 1)
        colour = colours.get(method, None)
        axis.plot(x, [1.0] + [s.mean_spearman for s in cascade.similarity], "o-", color=colour,
                  label=f"{method}: |Spearman|")
        axis.plot(x, [1.0] + [s.mean_ssim for s in cascade.similarity], "s--", color=colour, alpha=0.6,
                  label=f"{method}: SSIM")
        axis.axhline(cascade.baseline.mean_spearman, color=colour, linestyle=":", linewidth=1.5,
                     label=f"{method}: random vs random |Spearman|")
    longest = max(curves.values(), key=lambda c: len(c.steps))
    axis.set_xticks(np.arange(len(longest.steps) + 1), ["trained", *longest.steps], rotation=35, ha="right",
                    fontsize=8)
    axis.set_ylim(-0.05, 1.05)
    axis.set_ylabel("similarity to the trained model's map")
    axis.set_title(f"Cascading randomisation, {name} ({images} images)", fontsize=11)
    axis.legend(fontsize=7, loc="upper right")
    _save(figure, path, origin)
