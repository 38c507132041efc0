"""`hfxray explain --model DIR --method {gradcam,rollout,actmax} --out DIR [IMAGES...]`."""

from __future__ import annotations

import sys

from ..families import ADAPTERS, METHODS  # the registry imports no torch: --help stays fast
from ..logs import get_logger

logger = get_logger(__name__)


def _applies_to() -> str:
    """`gradcam: all kinds; rollout: vit, hybrid; ...` from the family adapters."""
    parts = []
    for method in METHODS:
        kinds = [family.name for family in ADAPTERS.values() if method in family.explanations]
        parts.append(f"{method}: {'all kinds' if len(kinds) == len(ADAPTERS) else ', '.join(kinds)}")
    return "; ".join(parts)


def add_arguments(parser) -> None:
    parser.add_argument("images", nargs="*", help="image files or folders (searched recursively); not for actmax")
    parser.add_argument("--model", required=True, action="append", metavar="DIR",
                        help="trained model folder; repeat to compare models (actmax: one grid row per model)")
    parser.add_argument("--method", required=True, choices=METHODS,
                        help=_applies_to())
    parser.add_argument("--out", required=True,
                        help="output folder: <image>.<model folder name>.<method>.png per image, its map as "
                             ".npz in the image file's pixel grid, and <model folder name>.<method>.csv/.json with "
                             "each map's status and lifts; several models and methods can share it")
    parser.add_argument("--target-class", default=None,
                        help="class Grad-CAM explains, by name or index (default: each image's prediction)")
    parser.add_argument("--steps", type=int, default=200, help="activation-maximization gradient steps")


def run(args) -> int:
    from pathlib import Path

    from tqdm.auto import tqdm

    from ..explain import ExplainError, NotApplicable, check_applicable, expand_paths, explain_actmax, \
        explain_images, load_model
    from ..errors import printable
    from ..outputs import check_output_folder
    from . import require_positive

    require_positive(steps=args.steps)
    out = check_output_folder(args.out, "--out", recursive=False)
    try:
        loaded, sources = {}, {}
        for model_dir in args.model:
            model, processor = load_model(model_dir)
            check_applicable(model, args.method)
            name = Path(model_dir).resolve().name
            name = name if name not in loaded else f"{name}-{len(loaded) + 1}"
            loaded[name], sources[name] = (model, processor), str(Path(model_dir).resolve())
        if args.method == "actmax":
            if args.images:
                logger.warning("note: actmax starts from a gray image; the image arguments are ignored")
            path = explain_actmax(loaded, out / f"{'+'.join(loaded)}.actmax.png", steps=args.steps,
                                  sources=list(sources.values()))
            print(f"activation maximization for {len(loaded)} model(s) -> {printable(str(path))}")
            return 0
        if not args.images:
            raise ExplainError(f"{args.method} needs images. To fix: add image files or folders after the options")
        total = len(expand_paths(args.images))
        skipped: list[tuple[Path, str]] = []

        def report(path: Path, reason: str) -> None:
            skipped.append((path, reason))
            tqdm.write(f"skipped {printable(str(path))}: {reason}", file=sys.stderr)

        written, degenerate, summaries, flagged = 0, 0, [], 0
        for name, (model, processor) in loaded.items():
            result = explain_images(model, args.method, args.images, out, processor, target_class=args.target_class,
                                    progress=True, on_skip=report, name=name, source=sources[name])
            written += len(result.figures)
            degenerate += len(result.degenerate)
            summaries.append(result.summary_csv)
            for row in result.rows:
                if row["warning"]:
                    flagged += 1
                    tqdm.write(f"{row['image']} [{name}]: {row['warning']}", file=sys.stderr)
            for row in result.degenerate:
                tqdm.write(f"degenerate map ({row['status']}) for {row['image']} [{name}]: see {row['figure']}",
                           file=sys.stderr)
    except (ExplainError, NotApplicable) as err:
        print(f"error: {printable(str(err))}", file=sys.stderr)
        return 2
    bad = len({path for path, _ in skipped})
    print(f"{args.method}: explained {total - bad} of {total} images ({written} figures), skipped {bad} unreadable, "
          f"{degenerate} degenerate map(s), {flagged} out of scope -> {printable(str(out))} (per-image status: "
          f"{', '.join(printable(p.name) for p in summaries)})")
    return 0 if written else 1
