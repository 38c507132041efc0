"""Training overhead: samples/s of hfxray's Trainer path vs a bare PyTorch loop (same model, batch, data, optimizer,
schedule, steps), for the tiny and the small preset. Goal: ratio >= 0.95.

    python benchmarks/train_overhead.py [--steps 40] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import tempfile

import torch

from _common import interleaved_medians, prepared_sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    from transformers import TrainingArguments

    from hfxray.data import load_imagefolder
    from hfxray.losses import LabelSmoothingCrossEntropy
    from hfxray.models import create_model
    from hfxray.recipes import build_optimizer, build_scheduler
    from hfxray.training import RecipeArguments, _recipe_trainer_class
    from hfxray.transforms import Geometry, XrayTensorDataset, decode_split

    prepared = prepared_sample()
    dataset = load_imagefolder(prepared)
    recipe = RecipeArguments(optimizer="adamw", schedule="onecycle", label_smoothing=0.1)
    for kind, preset in (("bit", "tiny"), ("vit", "tiny"), ("bit", "small"), ("vit", "small")):
        model, processor, _ = create_model(kind, preset)
        geometry = Geometry.from_processor(processor)
        images, labels = decode_split(dataset["train"], geometry.resize, progress=lambda x, **_: x)
        train = XrayTensorDataset(images, labels, geometry, train=True, max_zoom=1.1)
        samples = args.steps * args.batch_size

        def trainer_path():
            training_args = TrainingArguments(
                output_dir=tempfile.mkdtemp(), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
                learning_rate=1e-3, weight_decay=0.05, report_to="none", save_strategy="no", eval_strategy="no",
                logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0, use_cpu=True,
                dataloader_pin_memory=False)
            trainer = _recipe_trainer_class()(model=copy.deepcopy(model), args=training_args, train_dataset=train,
                                              data_collator=train.collate, recipe=recipe)
            trainer.train()

        def bare_loop():
            net = copy.deepcopy(model).train()
            optimizer = build_optimizer(net, "adamw", 1e-3, weight_decay=0.05)
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
                    if step == args.steps:
                        break

        times = interleaved_medians({"trainer": trainer_path, "bare": bare_loop}, repeats=args.repeats)
        trainer_rate, bare_rate = samples / times["trainer"], samples / times["bare"]
        print(f"train overhead {kind}.{preset}: trainer {trainer_rate:.1f} samples/s, bare loop {bare_rate:.1f} "
              f"samples/s, ratio {trainer_rate / bare_rate:.3f} (goal >= 0.95)")


if __name__ == "__main__":
    main()
