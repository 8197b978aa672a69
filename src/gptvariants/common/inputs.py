"""Reading the files a user hands us, with every problem reported as ``FILE: what is wrong``.

Python's own errors for a damaged file (``JSONDecodeError``, ``UnicodeDecodeError``, a
``TypeError`` from indexing a list that should be an object) name no file; these readers
raise ``InputError`` (a project error, so the CLI prints it as one line) naming the file, the
key at fault and what was expected.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import InputError


def read_text(path: Path) -> str:
    """The UTF-8 text of ``path``."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, not a file") from None
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as e:
        raise InputError(f"{path}: cannot be read ({e.strerror or e})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at byte offset {e.start})") from None


def read_json(path: Path, expect: type = dict) -> Any:
    """The JSON value in ``path``, which must be an ``expect`` (a JSON object by default)."""
    path = Path(path)
    text = read_text(path)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(
            f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
            "the file is damaged or was cut short"
        ) from None
    if not isinstance(value, expect):
        names: dict[type, str] = {dict: "a JSON object", list: "a JSON array"}
        want = names.get(expect, expect.__name__)
        raise InputError(f"{path}: expected {want}, found {type(value).__name__} {_short(value)}")
    return value


def require(obj: dict, key: str, check: Callable[[Any], Any], path: Path) -> Any:
    """``check(obj[key])``, with a missing key or a bad value reported against ``path``.

    ``check`` is a ``checks`` constraint or any callable raising ValueError/TypeError."""
    if key not in obj:
        raise InputError(f"{path}: the key {key!r} is missing; the file is damaged or not ours")
    try:
        return check(obj[key])
    except (ValueError, TypeError) as e:
        raise InputError(f"{path}: {key!r} {e}") from None


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
