"""Training overhead: samples/s of hfxray's Trainer path vs a bare PyTorch loop (same model, batch, data, optimizer,
schedule, steps), for the tiny and the small preset. Both sides are timed in steady state, from the end of step
WARM to the end of the last step: one-off costs (Trainer construction, the Trainer's final gc.collect, about
0.3 s here) are left out of both. Goal: ratio >= 0.95.

Like `hfxray train` on CPU, the process first keeps freed memory (`hfxray.cpu_memory`); `--default-allocator`
leaves glibc's default, under which the Trainer page-faults its activation memory in again at every step.

    python benchmarks/train_overhead.py [--steps 100] [--repeats 3] [--default-allocator]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from _common import interleaved_medians, prepared_sample, steady_trainer_seconds

WARM = 10


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--default-allocator", action="store_true", help="skip hfxray's CPU allocator setting")
    args = parser.parse_args()
    if not args.default_allocator:
        from hfxray.cpu_memory import keep_freed_memory

        keep_freed_memory()
    allocator = "default allocator" if args.default_allocator else "kept memory"

    from hfxray.data import load_imagefolder
    from hfxray.losses import LabelSmoothingCrossEntropy
    from hfxray.models import create_model
    from hfxray.arguments import RecipeArguments
    from hfxray.recipes import build_scheduler, decay_parameter_names
    from hfxray.transforms import Geometry, XrayTensorDataset, decode_split

    prepared = prepared_sample()
    dataset = load_imagefolder(prepared)
    recipe = RecipeArguments(schedule="onecycle")
    for kind, preset in (("bit", "tiny"), ("vit", "tiny"), ("bit", "small"), ("vit", "small")):
        model, processor, _ = create_model(kind, preset)
        geometry = Geometry.from_processor(processor)
        images, labels = decode_split(dataset["train"], geometry.resize, progress=lambda x, **_: x)
        train = XrayTensorDataset(images, labels, geometry, train=True, max_zoom=1.1)
        samples = (args.steps - WARM) * args.batch_size

        def trainer_path():
            return steady_trainer_seconds(model, train, recipe, args.steps, args.batch_size, WARM, weight_decay=0.05,
                                          dataloader_num_workers=0)

        def bare_loop():
            net = copy.deepcopy(model).train()
            decay = set(decay_parameter_names(net))
            groups = [{"params": [p for n, p in net.named_parameters() if n in decay], "weight_decay": 0.05},
                      {"params": [p for n, p in net.named_parameters() if n not in decay], "weight_decay": 0.0}]
            optimizer = torch.optim.AdamW(groups, lr=1e-3)
            scheduler = build_scheduler(optimizer, "onecycle", args.steps, args.steps)
            loss_fn = LabelSmoothingCrossEntropy(0.1)
            loader = torch.utils.data.DataLoader(train, batch_size=args.batch_size, shuffle=True, collate_fn=train.collate)
            step = 0
            while step < args.steps:
                for batch in loader:
                    outputs = net(pixel_values=batch["pixel_values"])
                    loss = loss_fn(outputs, batch["labels"])
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                    step += 1
                    if step == WARM:
                        start = time.perf_counter()
                    if step == args.steps:
                        break
            return time.perf_counter() - start

        times = interleaved_medians({"trainer": trainer_path, "bare": bare_loop}, repeats=args.repeats)
        trainer_rate, bare_rate = samples / times["trainer"], samples / times["bare"]
        print(f"train overhead {kind}.{preset} ({allocator}): trainer {trainer_rate:.1f} samples/s, bare loop {bare_rate:.1f} "
              f"samples/s, ratio {trainer_rate / bare_rate:.3f} (goal >= 0.95)")


if __name__ == "__main__":
    main()
