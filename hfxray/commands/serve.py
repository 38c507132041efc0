"""`hfxray serve --model RUN [--model RUN ...] [--host 127.0.0.1] [--port 7860] [--share]`: the models in a web page.

Exit status: 2 when a model cannot be loaded or an option is wrong; otherwise the server runs until interrupted.
"""

from __future__ import annotations

from ..logs import get_logger

logger = get_logger(__name__)


def add_arguments(parser) -> None:
    from ..serve import DEFAULT_HOST, DEFAULT_MAX_UPLOAD_MB, DEFAULT_PORT

    parser.add_argument("--model", action="append", required=True, metavar="RUN",
                        help="run folder from `hfxray train` (or Hub id); repeat to compare several models")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to listen on (default {DEFAULT_HOST}: this computer only; 0.0.0.0 exposes "
                             "the page to the network)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--share", action="store_true",
                        help="also publish a temporary public Gradio link (off by default: uploads are X-rays)")
    parser.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                        help=f"largest accepted upload in MiB (default {DEFAULT_MAX_UPLOAD_MB:g})")
    parser.add_argument("--examples", default=None, metavar="DIR",
                        help="Kaggle-layout CoronaHack folder whose test split gives the example images (default: "
                             "the sample if found; 'none' to show no examples)")
    parser.add_argument("--device", help="torch device such as cpu or cuda:0 (default: the first GPU, else CPU)")


def run(args) -> int:
    import os

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from ..serve import ServeError, check_port
    from ..serve_files import open_private_folder

    if not 0 < args.port < 65536:
        raise ServeError(f"--port {args.port}. To fix: pass a port between 1 and 65535.")
    if not args.max_upload_mb > 0:
        raise ServeError(f"--max-upload-mb {args.max_upload_mb}. To fix: pass a positive size.")
    check_port(args.host, args.port)
    files = open_private_folder()  # before gradio is imported: it reads its folders at import
    try:
        return _serve(args, files)
    finally:
        files.close()


def _serve(args, files) -> int:
    from pathlib import Path

    from ..env import sample_dir
    from ..serve import ServeError, build_app, find_examples, launch, load_served_model

    if args.examples and args.examples.lower() == "none":
        examples = []
    else:
        examples = find_examples(Path(args.examples) if args.examples else sample_dir())
        if args.examples and not examples:  # asked for by name: say so rather than serve without them
            raise ServeError(f"--examples {args.examples}: no test image of a CoronaHack download found there (its "
                             "metadata CSV and test folder). To fix: pass the unzipped CoronaHack folder, or 'none'.")
    models = [load_served_model(run_dir, device=args.device) for run_dir in args.model]
    for served in models:
        logger.info(f"serving {served.name} ({served.family}, {served.method}) from {served.run_dir}")
    app = build_app(models, examples, max_upload_mb=args.max_upload_mb, files=files)
    if not args.share:  # gradio's own lines would tell a command-line user to edit launch() for a public link
        print(f"serving at http://{args.host}:{args.port} (Ctrl+C stops it; --share adds a public link)", flush=True)
    launch(app, host=args.host, port=args.port, share=args.share, quiet=not args.share)
    return 0
