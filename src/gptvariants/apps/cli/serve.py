"""``gptv serve``: the web playground."""

from __future__ import annotations

import argparse
import sys

from ...common.errors import UnavailableError
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
