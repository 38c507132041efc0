"""Data path: images/s of hfxray's preprocessing (decode once + crop/normalise/collate each epoch) vs the
transformers image-classification example's per-batch torchvision transform, on the same real images at 224 px,
and vs what ViT-B/16 training consumes per second on this CPU. Goals: >= 2x the example, never the bottleneck,
epoch 2 <= 10 % of epoch 1. hfxray decodes on one thread per core, so the example is also run with as many
DataLoader workers (`--dataloader_num_workers`), its own way of using the cores.

    python benchmarks/data_path.py [--repeats 3]
"""

from __future__ import annotations

import argparse

import torch

from _common import interleaved_medians, median_time, prepared_sample

SIZE = 224


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    from torchvision.transforms import Compose, Normalize, RandomHorizontalFlip, RandomResizedCrop
    from torchvision.transforms import ToTensor
    from transformers import ViTConfig, ViTForImageClassification

    from hfxray.data import load_imagefolder
    from hfxray.models import build_processor
    from hfxray.transforms import Geometry, XrayTensorDataset, available_cores, decode_split

    train = load_imagefolder(prepared_sample())["train"]
    n = len(train)
    processor = build_processor(SIZE)
    geometry = Geometry.from_processor(processor)
    quiet = lambda items, **_: items  # noqa: E731

    def epochs(loader):
        for batch in loader:
            pass

    # --- the transformers example (examples/pytorch/image-classification/run_image_classification.py) --------
    normalize = Normalize(mean=processor.image_mean, std=processor.image_std)
    example_train = Compose([RandomResizedCrop(SIZE), RandomHorizontalFlip(), ToTensor(), normalize])

    def example_transform(batch):
        batch["pixel_values"] = [example_train(image.convert("RGB")) for image in batch["image"]]
        return batch

    def example_collate(examples):
        return {"pixel_values": torch.stack([e["pixel_values"] for e in examples]),
                "labels": torch.tensor([e["label"] for e in examples])}

    example_dataset = train.with_transform(example_transform)
    example_loader = torch.utils.data.DataLoader(example_dataset, batch_size=args.batch_size, shuffle=True,
                                                 collate_fn=example_collate)
    cores = available_cores()
    example_loader_workers = torch.utils.data.DataLoader(example_dataset, batch_size=args.batch_size, shuffle=True,
                                                         collate_fn=example_collate, num_workers=cores)

    # --- hfxray: decode + resize once, then crop/normalise per epoch ---------------------------------------
    state = {}

    def ours_first_epoch():
        images, labels = decode_split(train, geometry.resize, progress=quiet)
        state["dataset"] = XrayTensorDataset(images, labels, geometry, train=True, max_zoom=1.1)
        epochs(torch.utils.data.DataLoader(state["dataset"], batch_size=args.batch_size, shuffle=True,
                                           collate_fn=state["dataset"].collate))

    def ours_later_epoch():
        epochs(torch.utils.data.DataLoader(state["dataset"], batch_size=args.batch_size, shuffle=True,
                                           collate_fn=state["dataset"].collate))

    def ours_later_epoch_without_zoom():
        dataset = state["dataset"]
        plain = XrayTensorDataset(dataset.images, dataset.labels, geometry, train=True, max_zoom=1.0)
        epochs(torch.utils.data.DataLoader(plain, batch_size=args.batch_size, shuffle=True, collate_fn=plain.collate))

    times = interleaved_medians({"example": lambda: epochs(example_loader),
                                 "example_workers": lambda: epochs(example_loader_workers),
                                 "ours_epoch1": ours_first_epoch}, repeats=args.repeats)
    later = median_time(ours_later_epoch, repeats=args.repeats)
    later_without_zoom = median_time(ours_later_epoch_without_zoom, repeats=args.repeats)
    example_rate, first_rate, later_rate = n / times["example"], n / times["ours_epoch1"], n / later
    example_workers_rate = n / times["example_workers"]

    vit = ViTForImageClassification(ViTConfig(num_labels=2)).train()  # ViT-B/16, random weights
    optimizer = torch.optim.SGD(vit.parameters(), lr=0.01)
    batch = torch.randn(8, 3, SIZE, SIZE)

    def vit_step():
        vit(pixel_values=batch).logits.sum().backward()
        optimizer.step()
        optimizer.zero_grad()

    vit_rate = 8 / median_time(vit_step, repeats=args.repeats)
    print(f"data path epoch 1 (decode included): ours {first_rate:.0f} img/s vs transformers example "
          f"{example_rate:.0f} img/s, ratio {first_rate / example_rate:.2f} (goal >= 2)")
    print(f"data path epoch 1 vs the example with {cores} DataLoader workers: ours {first_rate:.0f} img/s vs "
          f"{example_workers_rate:.0f} img/s, ratio {first_rate / example_workers_rate:.2f}")
    print(f"data path later epochs: ours {later_rate:.0f} img/s vs example {example_rate:.0f} img/s, ratio "
          f"{later_rate / example_rate:.2f}")
    print(f"data path epoch 2 / epoch 1 time: {later / times['ours_epoch1']:.3f} with the zoom augmentation, "
          f"{later_without_zoom / times['ours_epoch1']:.3f} without (goal <= 0.10)")
    print(f"data path vs ViT-B/16 training consumption: ours {later_rate:.0f} img/s vs ViT-B/16 {vit_rate:.2f} img/s, "
          f"ratio {later_rate / vit_rate:.0f} (goal > 1: never the bottleneck)")


if __name__ == "__main__":
    main()
