"""Config keys: a dataclass field that carries its constraint, shared by config.py and the components.

Heads and objectives declare their own hyper-parameters as a nested ``Config`` dataclass of
``key(default, check)`` fields (torchtitan's component-config pattern); config.py gathers
them under the ``[objective]`` section, where they stay flat keys, unique across components.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

BIG = 1 << 31  # counts that index tensors (chunk rows, set draws)


def key(default: Any, check: Any, help: str = "") -> Any:
    """A config field with its constraint (a ``common.checks`` callable) and its description
    (``gptv train --help-config``) in the metadata."""
    return field(default=default, metadata={"check": check, "help": help})
