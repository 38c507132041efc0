"""Decode cache (`hfxray.cache`) vs decoding every split into memory at the start of each run (`decode_split`).

Each training run is a fresh process running `hfxray.training.train` as `scripts/train.py --model bit --preset
small --recipe scratch --image_size 224 --resize_size 256 --max_steps 2` does (no evaluation, no checkpoints),
on the sample prepared once and replicated 1x, 8x and 32x (every image hard-linked under new names, manifest
included). Modes: `memory` (every split decoded into memory, as before the cache), `cold` (the cache built by
this run), `warm` (the cache built by an earlier run). Printed, one line each:

- peak RSS of training at 1x, 8x, 32x (goal with the warm cache: flat within 10 %);
- start-up to the first step, warm cache vs in-memory decoding (goal <= 0.2x), from the process start and for
  the data phase alone;
- steady-state training samples/s over the cache vs over in-memory tensors (goal >= 0.95x), and the data path
  alone (crops + collate);
- two-process DDP on CPU (gloo): the cache built by one rank only, and rank 1's peak RSS at 1x vs 8x;
- the cost of the entries' CRC-32 check, side by side: opening the warm train entry (the 256 px training resize)
  with and without the check, and a warm-cache training run's data phase with and without it (`warm-unchecked`).

    python benchmarks/decode_cache.py [--factors 1 8 32] [--steps 30] [--repeats 3] [--skip-ddp]
    python benchmarks/decode_cache.py --checksum-only --factors 1 8   # the check's cost alone, no training
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, interleaved_medians, prepared_sample, steady_trainer_seconds

sys.path.insert(0, str(REPO))  # this checkout's hfxray, as in the training processes (PYTHONPATH)

TRAIN_FLAGS = ["--model", "bit", "--preset", "small", "--recipe", "scratch", "--image_size", "224",
               "--resize_size", "256", "--max_steps", "2", "--report_to", "none", "--save_strategy", "no",
               "--eval_strategy", "no", "--load_best_model_at_end", "false", "--average_last_epochs", "0",
               "--disable_tqdm", "true"]

CHILD = r'''
import json, os, resource, sys, time
mode, result_path, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
import hfxray.cache as cache
import hfxray.training as training
from hfxray.arguments import parse_config
from transformers import TrainerCallback

record = {"mode": mode, "data_seconds": 0.0, "found_in_cache": {}}
cache.VERIFY = mode != "warm-unchecked"
built_by_cache = cache.decoded_split


class InMemory(list):
    """Today's path: a list of decoded tensors (with the cache's `labels` / `select`)."""

    def __init__(self, images, labels):
        super().__init__(images)
        self.labels = labels

    def select(self, indices):
        return InMemory([self[i] for i in indices], [self.labels[i] for i in indices])


loaded = {}
returned = []


def timed(data_dir, name, resize, cache_dir=None, num_proc=None, split=None):
    start = time.perf_counter()
    if mode == "memory":
        # Today's path before the cache: list the prepared folder with `datasets`, decode every image.
        from hfxray.data import load_imagefolder
        from hfxray.transforms import decode_split

        if "dataset" not in loaded:
            loaded["dataset"] = load_imagefolder(data_dir)
        images = InMemory(*decode_split(loaded["dataset"][name], resize, progress=lambda items, **_: items))
    else:
        record["found_in_cache"][name] = any(info["split"] == name and info["resize"] == resize
                                             for _, info in cache.list_entries(cache_dir, data_dir))
        images = built_by_cache(data_dir, name, resize, cache_dir=cache_dir, num_proc=num_proc, split=split)
    record["data_seconds"] += time.perf_counter() - start
    returned.append(images)
    return images


cache.decoded_split = timed


class FirstStep(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        if "first_step_wall" not in record:
            record["first_step_wall"] = time.time() - float(os.environ["BENCH_T0"])
            record["first_step_after_train_call"] = time.perf_counter() - record["train_called"]


make_trainer = training._recipe_trainer_class


def timed_trainer_class():
    base = make_trainer()

    class Timed(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(FirstStep())

    return Timed


training._recipe_trainer_class = timed_trainer_class
arguments = parse_config(argv)
record["train_called"] = time.perf_counter()
training.train(arguments)
record["peak_rss_training_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
# Then every image once, as an epoch reads them: what a longer run would hold.
for images in returned:
    for index in range(len(images)):
        images[index]
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
record.update(peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              rss_anon_mib=int(status["RssAnon"].split()[0]) / 1024,
              rss_file_mib=int(status["RssFile"].split()[0]) / 1024,
              rank=int(os.environ.get("RANK", "0")))
with open(f"{result_path}.{record['rank']}", "w") as handle:
    json.dump(record, handle)
'''


def replicate(prepared: Path, factor: int, root: Path) -> Path:
    """A prepared folder with every kept image hard-linked `factor` times under new names (rep{k}-NAME)."""
    from hfxray.data import MANIFEST_NAME

    if factor == 1:
        return prepared
    target = root / f"x{factor}"
    shutil.copytree(prepared, target, copy_function=os.link)
    with (prepared / MANIFEST_NAME).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    (target / MANIFEST_NAME).unlink()  # a hard link to the original's: write a new file, not through it
    with (target / MANIFEST_NAME).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
        for k in range(1, factor):
            for row in rows:
                if row["status"] != "kept":
                    continue
                folder, name = row["file"].rsplit("/", 1)
                new = f"{folder}/rep{k}-{name}"
                os.link(prepared / row["file"], target / new)
                writer.writerow({**row, "file": new})
    return target


def _env() -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false")


def run_training(child: Path, mode: str, data_dir: Path, cache_dir: Path, work: Path, ddp: bool = False) -> list:
    out = Path(tempfile.mkdtemp(dir=work))
    result = out / "result.json"
    flags = [*TRAIN_FLAGS, "--data_dir", str(data_dir), "--output_dir", str(out / "run"), "--cache_dir",
             str(cache_dir)]
    if ddp:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(child), mode,
                   str(result), *flags]
        env = dict(_env(), ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    else:
        command = [sys.executable, str(child), mode, str(result), *flags]
        env = _env()
    env["BENCH_T0"] = repr(time.time())
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{mode} run failed:\n{done.stderr[-3000:]}")
    return [json.loads(path.read_text()) for path in sorted(out.glob("result.json.*"))]


def steady_state(prepared: Path, cache_dir: Path, steps: int, repeats: int) -> None:
    """Trainer samples/s and data-path images/s over the cache vs over in-memory tensors, interleaved."""
    import torch

    from hfxray.cache import decoded_split
    from hfxray.cpu_memory import keep_freed_memory
    from hfxray.data import load_imagefolder
    from hfxray.models import create_model
    from hfxray.arguments import RecipeArguments
    from hfxray.transforms import Geometry, XrayTensorDataset, decode_split

    keep_freed_memory()
    warm, batch = 5, 32
    train = load_imagefolder(prepared)["train"]
    # bit.tiny (64 px): the smallest step, where the data path weighs the most
    model, processor, _ = create_model("bit", "tiny")
    geometry = Geometry.from_processor(processor)
    images, labels = decode_split(train, geometry.resize, progress=lambda items, **_: items)
    cached = decoded_split(prepared, "train", geometry.resize, cache_dir=cache_dir, split=train)
    datasets = {name: XrayTensorDataset(source, labels, geometry, train=True, max_zoom=1.1)
                for name, source in (("memory", images), ("cache", cached))}
    recipe = RecipeArguments(schedule="onecycle")

    def trainer_run(dataset):
        return lambda: steady_trainer_seconds(model, dataset, recipe, steps, batch, warm)

    def epoch(dataset):
        def run():
            loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, collate_fn=dataset.collate)
            for _ in loader:
                pass
        return run

    samples = (steps - warm) * batch
    times = interleaved_medians({name: trainer_run(d) for name, d in datasets.items()}, repeats=repeats)
    print(f"steady state bit.tiny {geometry.crop} px, {steps} steps of {batch}: cache {samples / times['cache']:.1f} samples/s, "
          f"in memory {samples / times['memory']:.1f} samples/s, ratio {times['memory'] / times['cache']:.3f} "
          "(goal >= 0.95)")
    for resize in (geometry.resize, 256):
        crop_geometry = Geometry(resize, 224 if resize == 256 else geometry.crop, geometry.mean, geometry.std)
        images, labels = decode_split(train, resize, progress=lambda items, **_: items)
        cached = decoded_split(prepared, "train", resize, cache_dir=cache_dir, split=train)
        data = {name: XrayTensorDataset(source, labels, crop_geometry, train=True, max_zoom=1.1)
                for name, source in (("memory", images), ("cache", cached))}
        times = interleaved_medians({name: epoch(d) for name, d in data.items()}, repeats=max(5, repeats))
        print(f"data path alone (crops + collate, {crop_geometry.crop} px crops of {resize} px): cache "
              f"{len(train) / times['cache']:.0f} img/s, in memory {len(train) / times['memory']:.0f} img/s, "
              f"ratio {times['memory'] / times['cache']:.3f}")


def checksum_cost(data_dir: Path, factor: int, cache_dir: Path, repeats: int) -> None:
    """Opening the warm train entry at 256 px with and without the CRC-32 check, interleaved."""
    import hfxray.cache as cache

    cache.decoded_split(data_dir, "train", 256, cache_dir=cache_dir)  # built (cold) once, outside the timing
    [(folder, info)] = [(f, i) for f, i in cache.list_entries(cache_dir, data_dir) if i["split"] == "train"]

    def opening(verify: bool):
        def run():
            cache.VERIFY = verify
            cache.decoded_split(data_dir, "train", 256, cache_dir=cache_dir)
        return run

    times = interleaved_medians({"checked": opening(True), "unchecked": opening(False)}, repeats=repeats)
    cache.VERIFY = True
    mib, cost = info["bytes"] / 2**20, times["checked"] - times["unchecked"]
    print(f"x{factor} train entry ({info['rows']} images, {mib:.0f} MiB): warm open with the CRC-32 check "
          f"{times['checked']:.3f} s, without {times['unchecked']:.3f} s; the check costs {cost:.3f} s "
          f"({mib / max(cost, 1e-9):.0f} MiB/s)")


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--factors", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-ddp", action="store_true")
    parser.add_argument("--skip-steady", action="store_true")
    parser.add_argument("--skip-scale", action="store_true", help="skip the 1x/8x/32x training runs")
    parser.add_argument("--checksum-only", action="store_true",
                        help="only the CRC-32 check's cost: warm opens of the train entry with and without it")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hfxray-decode-cache-"))
    child = work / "child.py"
    child.write_text(CHILD)
    prepared = prepared_sample()
    try:
        rows, data_dirs = {}, {}
        for factor in args.factors:
            data_dir = data_dirs[factor] = replicate(prepared, factor, work)
            if args.checksum_only:
                checksum_cost(data_dir, factor, work / f"cache-crc-x{factor}", max(5, args.repeats))
                continue
            if args.skip_scale:
                continue
            cache_dir = work / f"cache-x{factor}"
            runs = {"cold": run_training(child, "cold", data_dir, cache_dir, work)[0]}
            # memory and warm right after each other, so that load from other work hits both alike
            for mode in ("memory", "warm", "warm-unchecked"):
                runs[mode] = run_training(child, mode, data_dir, cache_dir, work)[0]
            assert runs["warm"]["found_in_cache"] == {"train": True, "validation": True}, runs["warm"]
            images = sum(1 for _ in (data_dir / "train").rglob("*.jpeg")) + sum(
                1 for _ in (data_dir / "validation").rglob("*.jpeg"))
            rows[factor] = runs
            for mode in ("memory", "cold", "warm"):
                r = runs[mode]
                print(f"x{factor} ({images} train+validation images) {mode:>6}: peak RSS {r['peak_rss_mib']:.0f} MiB "
                      f"(at the end: anonymous {r['rss_anon_mib']:.0f}, file-backed {r['rss_file_mib']:.0f}), "
                      f"first step {r['first_step_wall']:.1f} s after the process start, data phase "
                      f"{r['data_seconds']:.2f} s")
            memory, warm, unchecked = runs["memory"], runs["warm"], runs["warm-unchecked"]
            print(f"x{factor} warm-cache data phase with the CRC-32 check {warm['data_seconds']:.2f} s, without "
                  f"{unchecked['data_seconds']:.2f} s; first step {warm['first_step_wall']:.1f} s vs "
                  f"{unchecked['first_step_wall']:.1f} s after the process start")
            print(f"x{factor} start-up to the first step, warm cache / in memory: "
                  f"{warm['first_step_wall'] / memory['first_step_wall']:.3f} from the process start, "
                  f"{warm['data_seconds'] / memory['data_seconds']:.3f} for the data phase (goal <= 0.2)")
        if args.checksum_only:
            return
        first = args.factors[0]
        for factor in args.factors[1:] if not args.skip_scale else []:
            ratio = {mode: rows[factor][mode]["peak_rss_mib"] / rows[first][mode]["peak_rss_mib"]
                     for mode in ("memory", "cold", "warm")}
            anonymous = rows[factor]["warm"]["rss_anon_mib"] / rows[first]["warm"]["rss_anon_mib"]
            print(f"peak RSS x{factor} / x{first}: warm cache {ratio['warm']:.3f} (goal <= 1.10), cold cache "
                  f"{ratio['cold']:.3f}, in memory {ratio['memory']:.3f}; anonymous RSS at the end, warm cache "
                  f"{anonymous:.3f}")
        if not args.skip_steady:
            steady_state(prepared, work / "cache-steady", args.steps, args.repeats)
        if not args.skip_ddp:
            ddp = {}
            for factor in (args.factors[0], args.factors[min(1, len(args.factors) - 1)]):
                data_dir = data_dirs[factor]
                cache_dir = work / f"cache-ddp-x{factor}"
                cold = run_training(child, "cold", data_dir, cache_dir, work, ddp=True)
                warm = run_training(child, "warm", data_dir, cache_dir, work, ddp=True)
                ddp[factor] = warm
                from hfxray.cache import list_entries

                entries = list_entries(cache_dir, data_dir)
                builders = [r["rank"] for r in cold if not all(r["found_in_cache"].values())]
                print(f"DDP x{factor}: {len(entries)} cache entries (train, validation); built by rank(s) "
                      f"{builders}, found in the cache by {[r['rank'] for r in cold if r['rank'] not in builders]}; "
                      + ", ".join(f"rank {r['rank']} peak RSS cold {c['peak_rss_mib']:.0f} / warm "
                                  f"{r['peak_rss_mib']:.0f} MiB (anonymous at the end {r['rss_anon_mib']:.0f})"
                                  for c, r in zip(cold, warm)))
            small, large = ddp.values() if len(ddp) == 2 else (None, None)
            if small is not None:
                print(f"DDP rank 1 peak RSS x{list(ddp)[1]} / x{list(ddp)[0]} (warm cache): "
                      f"{large[1]['peak_rss_mib'] / small[1]['peak_rss_mib']:.3f} (goal ~1: not growing with the "
                      "data)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(prepared.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
