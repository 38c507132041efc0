"""`hfxray predict --model DIR_OR_HUB_ID PATHS... [--out preds.csv|preds.json] [--batch-size N] [--device D]`.

Exit status: 0 when at least one file was predicted (unreadable files are listed, not fatal), 1 when none could
be, 2 for a model or output problem.
"""

from __future__ import annotations

import sys

from ..logs import get_logger

logger = get_logger(__name__)


def add_arguments(parser) -> None:
    parser.add_argument("paths", nargs="+", help="image files and/or folders (searched recursively for images)")
    parser.add_argument("--model", required=True, help="run folder from `hfxray train`, or a Hub id owner/name")
    parser.add_argument("--out", help="output file, .csv or .json (default: CSV on stdout)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    parser.add_argument("--device", help="torch device such as cpu or cuda:0 (default: the first GPU, else CPU)")


def run(args) -> int:
    from ..errors import printable
    from ..imaging import IMAGE_EXTENSIONS, expand_paths
    from ..calibration import folded_temperature
    from ..predict import PredictError, check_output_path, load_classifier, predict_files, summary_line, \
        write_predictions

    from . import require_positive

    require_positive(batch_size=args.batch_size)
    files = expand_paths(args.paths)
    if not files:
        print(f"error: no image files ({', '.join(IMAGE_EXTENSIONS)}) under {printable(', '.join(args.paths))}. "
              "To fix: pass image files or folders that contain some.", file=sys.stderr)
        return 1
    try:
        check_output_path(args.out)
        classifier = load_classifier(args.model, device=args.device)
    except PredictError as err:
        print(f"error: {printable(str(err))}", file=sys.stderr)
        return 2
    temperature = folded_temperature(classifier.model)
    if temperature != 1.0:
        logger.info(f"probabilities temperature-scaled with T = {temperature:.4g}")
    from ..scope import load_check

    ood_check, why_not = load_check(classifier.model.name_or_path)
    if ood_check is None:
        logger.warning(f"out-of-distribution check: not checked ({why_not})")
    predictions = predict_files(classifier, files, batch_size=args.batch_size, ood_check=ood_check)
    write_predictions(predictions, args.out)
    failed = any(p.error for p in predictions)
    (logger.warning if failed else logger.info)(summary_line(predictions) +
                                                (f"; written to {printable(args.out)}" if args.out else ""))
    return 0 if any(not p.error for p in predictions) else 1
