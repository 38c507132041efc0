"""Can simple image features tell two sources apart among images of one class, before any model is trained?

    python scripts/source_features.py --data-dir PREPARED [--label normal] [--out source_features.json]

For every kept image of the class (all splits), each preprocessing variant below is applied, then hfxray's own
input geometry (shortest edge 144, center crop 128, `hfxray.transforms`), and a 5-fold logistic regression on
plain features (the 32 x 32 mean-pooled crop, two sharpness measures, the pixel sd, the colour spread) predicts
the source. The figure is the separation, max(AUROC, 1 - AUROC): 0.5 = the features cannot tell the sources
apart. Variants:
- `as prepared`: the images as `hfxray data prepare` wrote them (what training reads today);
- `grey, shortest side 224`: grey, downscaled (LANCZOS) to a shortest side of 224 px, aspect kept;
- `grey, 224 x 224`: grey, resized (LANCZOS) to 224 x 224, aspect not kept: what the Kermany copies of 224 x 224
  px were made with;
- `grey, 224 x 224, JPEG`: the same, then saved as JPEG (Pillow's default quality) and read back;
- `--resize_mode square`: the images as prepared, resized to 144 x 144 (aspect not kept) before the crop, as a run
  trained with `--resize_mode square` and its saved processor see them.
A source whose images went through another pipeline (size, aspect, re-encoding) can be told apart by such
features: a classifier trained on the merged pool can then learn the source instead of the disease.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

import numpy as np


def _variants():
    from PIL import Image

    def shortest(image, side=224):
        grey = image.convert("L")
        scale = side / min(grey.size)
        return grey.resize((round(grey.width * scale), round(grey.height * scale)), Image.Resampling.LANCZOS)

    def square(image, side=224):
        return image.convert("L").resize((side, side), Image.Resampling.LANCZOS)

    def square_jpeg(image):
        buffer = io.BytesIO()
        square(image).convert("RGB").save(buffer, "JPEG")
        buffer.seek(0)
        return Image.open(buffer).convert("L")

    # name -> (what is done to the file's image, the resize before the 128 px centre crop: hfxray's geometry)
    return {"as prepared": (lambda image: image, 144), "grey, shortest side 224": (shortest, 144),
            "grey, 224 x 224": (square, 144), "grey, 224 x 224, JPEG": (square_jpeg, 144),
            "--resize_mode square": (lambda image: image, (144, 144))}


def features(image, resize: int | tuple[int, int] = 144) -> np.ndarray:
    from hfxray.transforms import center_crop, decode_resized

    crop = center_crop(decode_resized(image, resize), 128).float()
    grey = crop.mean(0).numpy() / 255.0
    laplacian = 4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:]
    colour = float((crop.max(0).values - crop.min(0).values).mean()) if crop.shape[0] == 3 else 0.0
    pooled = grey.reshape(32, 4, 32, 4).mean(axis=(1, 3)).ravel()
    return np.r_[pooled, laplacian.var() * 1e3, np.abs(laplacian).mean() * 1e2, grey.std(), colour]


def separation(x: np.ndarray, y: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    scaled = (x - x.mean(0)) / (x.std(0) + 1e-9)
    probs = cross_val_predict(LogisticRegression(max_iter=3000), scaled, y,
                              cv=StratifiedKFold(5, shuffle=True, random_state=0), method="predict_proba")[:, 1]
    auroc = roc_auc_score(y, probs)
    return float(max(auroc, 1 - auroc))


def main(argv: list[str] | None = None) -> int:
    from PIL import Image

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="a prepared folder merging two sources")
    parser.add_argument("--label", default="normal", help="the class whose images are compared (default: normal)")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    data = Path(args.data_dir)
    with open(data / "manifest.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["status"] == "kept" and r["label"] == args.label]
    sources = sorted({r["source"] for r in rows})
    if len(sources) != 2:
        print(f"error: {data} holds {len(sources)} source(s) among kept {args.label} images; this compares two. "
              "To fix: prepare two --source folders into one output.", file=sys.stderr)
        return 2
    y = np.array([r["source"] == sources[1] for r in rows], dtype=int)
    result = dict(label=args.label, sources={s: int((y == i).sum()) for i, s in enumerate(sources)}, separation={})
    for name, (variant, resize) in _variants().items():
        rows_features, sharpness = [], []
        for row in rows:
            with Image.open(data / row["file"]) as image:
                image.load()
                values = features(variant(image), resize)
            rows_features.append(values)
            sharpness.append(values[-4:-2])
        result["separation"][name] = dict(all_features=separation(np.array(rows_features), y),
                                          sharpness_only=separation(np.array(sharpness), y))
        print(f"{name:26s} separation {result['separation'][name]['all_features']:.3f} "
              f"(sharpness alone {result['separation'][name]['sharpness_only']:.3f})", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
