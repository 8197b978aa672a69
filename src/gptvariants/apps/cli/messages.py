"""How the command line speaks under torchrun: rank 0 alone prints notes, warnings and errors."""

from __future__ import annotations

import os
import sys


def rank() -> int:
    """This process's rank under torchrun (0 otherwise)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def say(command: str, kind: str, message: str) -> None:
    """``gptv COMMAND: KIND: message`` on stderr, from rank 0 only."""
    if rank() == 0:
        print(f"gptv {command}: {kind}: {message}", file=sys.stderr, flush=True)
