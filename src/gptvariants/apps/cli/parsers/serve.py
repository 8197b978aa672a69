"""The parser of ``gptv serve``: the web playground."""

from __future__ import annotations

from ....predict.options import DTYPES
from . import Command


def register_cli(subparsers) -> None:
    """Add ``gptv serve`` to the ``gptv`` subcommands."""
    p = subparsers.add_parser(
        "serve",
        help="a web playground: runs side by side, coloured by uncertainty",
        description="``gptv serve``: the web playground.",
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
    p.set_defaults(func=Command("serve:cmd_serve"))
