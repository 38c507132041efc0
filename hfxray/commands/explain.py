"""`hfxray explain --model DIR --method {gradcam,rollout,actmax} --out DIR [IMAGES...]`, and
`hfxray explain --sanity --model DIR --out DIR [IMAGES...]`: the randomisation checks on the user's own run."""

from __future__ import annotations

import sys

from ..families import ADAPTERS, METHODS  # the registry imports no torch: --help stays fast
from ..logs import get_logger

logger = get_logger(__name__)


def _applies_to() -> str:
    """`gradcam: bit, hybrid, convnext; rollout: vit, hybrid; actmax: all kinds` from the family adapters."""
    parts = []
    for method in METHODS:
        kinds = [family.name for family in ADAPTERS.values() if method in family.explanations]
        parts.append(f"{method}: {'all kinds' if len(kinds) == len(ADAPTERS) else ', '.join(kinds)}")
    return "; ".join(parts)


def add_arguments(parser) -> None:
    parser.add_argument("images", nargs="*", help="image files or folders (searched recursively); not for actmax")
    parser.add_argument("--model", required=True, action="append", metavar="DIR",
                        help="trained model folder; repeat to compare models (actmax: one grid row per model)")
    parser.add_argument("--method", choices=METHODS,
                        help=_applies_to() + " (with --sanity: the method to check, default every one that applies)")
    parser.add_argument("--out", required=True,
                        help="output folder: <image>.<model folder name>.<method>.png per image, its map as "
                             ".npz in the image file's pixel grid, and <model folder name>.<method>.csv/.json with "
                             "each map's status and lifts; several models and methods can share it")
    parser.add_argument("--target-class", default=None,
                        help="class Grad-CAM explains, by name or index (default: each image's prediction)")
    parser.add_argument("--steps", type=int, default=200, help="activation-maximization gradient steps")
    sanity = parser.add_argument_group("sanity checks (--sanity)")
    sanity.add_argument("--sanity", action="store_true",
                        help="instead of figures, run the randomisation checks (cascading layer re-initialisation "
                             "against a random-vs-random baseline, and data randomisation with --permuted-model) "
                             "and write <model>.sanity.md/.png/.json into --out; images default to the run's test "
                             "split")
    sanity.add_argument("--sanity-images", type=int, default=16, metavar="N",
                        help="how many images the checks use, spread evenly over the sorted list (default 16)")
    sanity.add_argument("--permuted-model", default=None, metavar="DIR",
                        help="a run of the same model trained on permuted labels: its maps are compared with the "
                             "model's (data randomisation)")


def run(args) -> int:
    from pathlib import Path

    from tqdm.auto import tqdm

    from ..explain import ExplainError, NotApplicable, check_applicable, expand_paths, explain_actmax, \
        explain_images, load_model
    from ..errors import printable
    from ..outputs import check_output_folder
    from . import require_positive

    require_positive(steps=args.steps, sanity_images=args.sanity_images)
    out = check_output_folder(args.out, "--out", recursive=False)
    if args.sanity:
        return _sanity(args, out)
    if args.method is None:
        print("error: --method is required. To fix: add --method gradcam, rollout or actmax (or --sanity)",
              file=sys.stderr)
        return 2
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


def _sanity(args, out) -> int:
    from pathlib import Path

    from ..explain import ExplainError, NotApplicable
    from ..errors import printable
    from ..explain.sanity_report import sanity_check

    if len(args.model) != 1 or args.method == "actmax" or args.target_class is not None:
        print("error: --sanity checks one model's gradcam or rollout maps. To fix: give one --model, and "
              "--method gradcam or rollout or none", file=sys.stderr)
        return 2

    def skipped(path: Path, reason: str) -> None:
        print(f"skipped {printable(str(path))}: {reason}", file=sys.stderr)

    try:
        summary = sanity_check(args.model[0], out, args.images, count=args.sanity_images,
                               permuted_dir=args.permuted_model,
                               methods=[args.method] if args.method else None,
                               progress=lambda line: print(line, file=sys.stderr, flush=True), on_skip=skipped)
    except (ExplainError, NotApplicable) as err:
        print(f"error: {printable(str(err))}", file=sys.stderr)
        return 2
    for method, entry in summary["results"].items():
        checks = [("cascading", entry["cascading"]), ("data randomisation", entry.get("data_randomisation"))]
        for check, result in checks:
            if result is not None:
                print(f"{method} {check}: {'pass' if result['passed'] else 'FAIL'} ({result['verdict']})")
    print(f"sanity report -> {printable(str(out / (summary['name'] + '.sanity.md')))}")
    return 0
