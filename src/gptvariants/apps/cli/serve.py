"""``gptv serve``: the web playground."""

from __future__ import annotations

import argparse
import sys

from ...common.errors import UnavailableError
from ...predict.prediction import DTYPES
from ..serve import INSTALL_HINT, LOOPBACK_NAMES, check_port, is_loopback
from ..serve.runs import discover, load_runs


def cmd_serve(args: argparse.Namespace) -> int:
    """Load every run once, then serve the page and the API until Ctrl-C."""
    try:
        import uvicorn

        from ..serve.app import create_app
    except ImportError as e:
        raise UnavailableError(f"{INSTALL_HINT} ({e})") from None

    paths, report = discover(args.paths)
    check_port(args.host, args.port)
    print(f"loading {len(paths)} run(s): {', '.join(paths)}", file=sys.stderr)
    runs = load_runs(paths, device=args.device, dtype=args.dtype)
    local = is_loopback(args.host)
    if not local:
        print(
            f"gptv serve: warning: listening on {args.host}: anyone who can reach it can run the models",
            file=sys.stderr,
        )
    app = create_app(
        runs,
        report,
        workers=args.workers,
        max_pending=args.max_pending,
        allowed_hosts=[*LOOPBACK_NAMES, args.host] if local else None,
    )
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(
        f"gptv serve: http://{shown}:{args.port}/" + (" (with the experiment report)" if report else ""),
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=2)
    return 0


def register_cli(subparsers) -> None:
    """Add ``gptv serve`` to the ``gptv`` subcommands."""
    p = subparsers.add_parser(
        "serve",
        help="a web playground: runs side by side, coloured by uncertainty",
        description=__doc__.splitlines()[0],
    )
    p.add_argument(
        "paths",
        nargs="+",
        metavar="RUN",
        help="run folders, folders of runs, or an experiment folder (then the Report view shows its report)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | mps | auto")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="weights to predict in (the readout stays fp32)")
    p.add_argument("--workers", type=int, default=4, help="threads for model work")
    p.add_argument("--max-pending", type=int, default=64, help="requests in progress before new ones get 503")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=cmd_serve)
