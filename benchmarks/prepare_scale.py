"""Data preparation at scale: the sample replicated 1x, 4x and 8x (5,768 rows, about the full Kaggle CSV's
5,910), each prepared in a fresh process; prints time, time per row and peak RSS. Goal: linear time, < 1 GiB.

    python benchmarks/prepare_scale.py
"""

from __future__ import annotations

import csv
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import require_sample

PREPARE = "import sys; from hfxray.data import prepare; prepare(sys.argv[1], sys.argv[2], progress=lambda x, **_: x, echo=lambda *_: None)"


def replicate(sample: Path, factor: int, root: Path) -> Path:
    """A Kaggle-layout copy with every image hard-linked `factor` times under new names (rep{k}-NAME)."""
    from hfxray.data.coronahack import CSV_NAME, IMAGE_ROOT

    target = root / f"x{factor}"
    with (sample / CSV_NAME).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for split in ("train", "test"):
        (target / IMAGE_ROOT / split).mkdir(parents=True)
    with (target / CSV_NAME).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        for k in range(factor):
            for row in rows:
                name = row["X_ray_image_name"] if k == 0 else f"rep{k}-{row['X_ray_image_name']}"
                split = row["Dataset_type"].lower()
                os.link(sample / IMAGE_ROOT / split / row["X_ray_image_name"], target / IMAGE_ROOT / split / name)
                writer.writerow({**row, "X_ray_image_name": name})
    return target


def main() -> None:
    sample = require_sample()
    root = Path(tempfile.mkdtemp(prefix="hfxray-scale-"))
    results = []
    for factor in (1, 4, 8):
        source = replicate(sample, factor, root)
        rows = sum(1 for _ in open(source / "Chest_xray_Corona_Metadata.csv")) - 1
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", PREPARE, str(source), str(root / f"out{factor}")], check=True)
        elapsed = time.perf_counter() - start
        peak_mib = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before) / 1024
        results.append((factor, rows, elapsed))
        print(f"prepare x{factor}: {rows} rows in {elapsed:.1f} s ({1000 * elapsed / rows:.2f} ms/row), "
              f"peak RSS {peak_mib:.0f} MiB (goal < 1024)")
    base = results[0][2] / results[0][1]
    for factor, rows, elapsed in results[1:]:
        print(f"prepare scaling x{factor}: time per row / x1 time per row = {(elapsed / rows) / base:.2f} "
              "(goal ~1: linear)")


if __name__ == "__main__":
    main()
