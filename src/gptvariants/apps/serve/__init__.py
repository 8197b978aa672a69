"""``gptv serve``: a local web playground that puts runs side by side, token by token.

Generate (one prompt, one column per run, tokens streamed), Score (a text coloured by each
run's surprisal, entropy, mutual information or conformal set size) and Report (an experiment's
report.md and plots). The web server (FastAPI on uvicorn) is the optional extra ``serve``; importing this
package does not need it, so ``gptv`` starts without it.
"""

from __future__ import annotations

import ipaddress
import socket

LOOPBACK_NAMES = ("127.0.0.1", "localhost")
INSTALL_HINT = 'gptv serve needs the web server: pip install -e ".[serve]" (fastapi, uvicorn, markdown-it-py)'


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_port(host: str, port: int) -> None:
    """Fail now, before the runs load, when the address cannot be listened on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            s.bind((host, port))
        except OSError as e:
            raise OSError(f"cannot listen on {host}:{port} ({e.strerror}): pass another --port or --host") from None
