"""The whole path offline in minutes: prepare, train the tiny preset of each model, evaluate, report, explain,
reload through `pipeline`, predict. Uses the real sample when present, else a generated set (and says so)."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np

from .data.coronahack import CSV_NAME, IMAGE_ROOT
from .families import ADAPTERS

KINDS = tuple(ADAPTERS)  # every model family (hfxray/families/), in its listing order


def generate_source(root: Path, patients_per_class: int = 40, seed: int = 0) -> Path:
    """A Kaggle-layout set of synthetic 'X-rays': noise with two lung fields; virus cases carry diffuse haze."""
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        (root / IMAGE_ROOT / split).mkdir(parents=True, exist_ok=True)
    rows = []
    yy, xx = np.mgrid[0:160, 0:160]
    lungs = (((xx - 50) / 28) ** 2 + ((yy - 85) / 55) ** 2 < 1) | (((xx - 110) / 28) ** 2 + ((yy - 85) / 55) ** 2 < 1)
    for index in range(2 * patients_per_class):
        virus = index % 2 == 1
        split = "TEST" if index % 5 == 0 else "TRAIN"
        pixels = 150 - 90 * lungs + rng.normal(0, 18, lungs.shape)
        if virus:
            haze = np.zeros_like(pixels)
            haze[rng.integers(70, 130), rng.integers(30, 130)] = 1
            haze = np.asarray(Image.fromarray((haze * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(18)))
            pixels += 60 * lungs * haze / max(haze.max(), 1) + 25 * lungs
        name = f"person{index}_virus_{index}.jpeg" if virus else f"IM-{index:04d}-0001.jpeg"
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="L")
        image.save(root / IMAGE_ROOT / split.lower() / name, quality=90)
        rows.append([len(rows), name, "Pnemonia" if virus else "Normal", split, "", "Virus" if virus else ""])
    with (root / CSV_NAME).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["", "X_ray_image_name", "Label", "Dataset_type", "Label_2_Virus_category",
                         "Label_1_Virus_category"])
        writer.writerows(rows)
    return root


def run_demo(out: Path, source: Path | None = None, epochs: int = 4, echo=print) -> dict[str, Path]:
    """Run every stage into `out`; returns the important output paths."""
    from .data import prepare, read_manifest
    from .env import sample_dir
    from .predict import load_classifier, predict_files, write_predictions
    from .report import write_report
    from .arguments import build_config
    from .workflow import execute, summary

    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if source is None:
        source = sample_dir()
        if source is None:
            source = generate_source(out / "generated-source")
            echo(f"[demo] real sample not found: using a GENERATED set of synthetic images at {source} "
                 "(set HFXRAY_SAMPLE_DIR to the CoronaHack sample for real X-rays)")
        else:
            echo(f"[demo] using the real CoronaHack sample at {source}")
    prepared = out / "prepared"
    echo("[demo] 1/6 preparing the ImageFolder (patient-level split)")
    prepare(source, prepared, echo=lambda *_: None)
    runs = {}
    for kind in KINDS:
        echo(f"[demo] 2/6 training {kind} (tiny preset, {epochs} epochs)")
        runs[kind] = out / "runs" / kind
        result = execute(build_config(model=kind, preset="tiny", recipe="scratch", data_dir=prepared,
                                         output_dir=runs[kind], overwrite_output_dir=True, num_train_epochs=epochs,
                                         image_size=64, resize_size=72, logging_steps=5, disable_tqdm=True))
        echo(summary(runs[kind], prepared, result, result.get("calibration")))
    echo("[demo] 3/6 writing the comparison report (each run evaluated itself on the test split)")
    report = write_report(list(runs.values()), out / "report")
    test_files = [prepared / r["file"] for r in read_manifest(prepared) if r["status"] == "kept" and r["split"] == "test"]
    echo("[demo] 4/6 explaining one test image with each model")
    explanations = explain_one(runs, test_files[0], out / "explain")
    echo("[demo] 5/6 reloading through pipeline('image-classification') and predicting the test split")
    predictions = out / "predictions.csv"
    classifier = load_classifier(str(runs["bit"]))
    write_predictions(predict_files(classifier, test_files, progress=False), predictions)
    echo(f"[demo] 6/6 done in {time.perf_counter() - start:.0f} s. Outputs:")
    paths = {"prepared": prepared, "report": report, "predictions": predictions, "explanations": explanations,
             **{f"run_{kind}": path for kind, path in runs.items()}}
    for name, path in paths.items():
        echo(f"  {name:<13} {path}")
    echo("[demo] see each model's answer and explanation in a web page (Ctrl-C to stop):")
    echo("  " + serve_command(runs.values()))
    return paths


def serve_command(run_dirs) -> str:
    """The `hfxray serve` line for these run folders (quoted for a POSIX shell)."""
    import shlex

    return "hfxray serve " + " ".join(f"--model {shlex.quote(str(path))}" for path in run_dirs)


def explain_one(runs: dict[str, Path], image: Path, out: Path) -> Path:
    """Each family's first explanation (its adapter's: Grad-CAM for the CNNs and the hybrid's backbone, attention
    rollout for ViT) on one image."""
    from .explain import explain

    for kind, run_dir in runs.items():
        explain(str(run_dir), ADAPTERS[kind].explanation, [image], out / kind)
    return out
