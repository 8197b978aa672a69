"""Value constraints shared by config keys and command-line arguments: type, range, finiteness.

A check is a callable ``check(value) -> value`` that accepts the value in its own type or as
text (a command-line string), returns it normalised (``Int()("1e3") == 1000``) and raises
``ValueError("expected an integer >= 1, got '2.5'")`` otherwise. Integers given as
non-integral numbers are refused, never truncated; NaN and infinities are refused everywhere.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .errors import InputError

INT64_MAX = 2**63 - 1


def _bad(description: str, value: Any) -> ValueError:
    shown = repr(value)
    return ValueError(f"expected {description}, got {shown[:60] + '...' if len(shown) > 60 else shown}")


class Int:
    """An integer in [lo, hi] (hi defaults to the int64 maximum). Text may be written 1000, 1e3 or 1_000,
    unless ``text=False`` (values read from JSON files, where a string is a damaged field)."""

    def __init__(self, lo: int | None = None, hi: int | None = INT64_MAX, *, text: bool = True) -> None:
        self.lo, self.hi, self.text = lo, INT64_MAX if hi is None else hi, text

    def describe(self) -> str:
        if self.lo is not None and self.hi < INT64_MAX:
            return f"an integer in [{self.lo}, {self.hi}]"
        return f"an integer >= {self.lo}" if self.lo is not None else "an integer"

    def __call__(self, value: Any) -> int:
        number = None if isinstance(value, str) and not self.text else self._parse(value)
        if number is None or (self.lo is not None and number < self.lo) or number > self.hi:
            raise _bad(self.describe(), value)
        return number

    @staticmethod
    def _parse(value: Any) -> int | None:
        if isinstance(value, bool):
            return None
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            text = value.strip()
            if re.fullmatch(r"[+-]?\d[\d_]*", text):
                return int(text)
            try:
                value = float(text)
            except ValueError:
                return None
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        return None


class Float:
    """A finite number in the interval given by lo/hi (closed ends unless lo_open/hi_open)."""

    def __init__(
        self, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False
    ) -> None:
        self.lo, self.hi, self.lo_open, self.hi_open = lo, hi, lo_open, hi_open

    def describe(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"a number in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"a finite number {'>' if self.lo_open else '>='} {self.lo:g}"
        if self.hi is not None:
            return f"a finite number {'<' if self.hi_open else '<='} {self.hi:g}"
        return "a finite number"

    def __call__(self, value: Any) -> float:
        number = self._parse(value)
        if number is None or not self._inside(number):
            raise _bad(self.describe(), value)
        return number

    def _inside(self, x: float) -> bool:
        if self.lo is not None and (x < self.lo or (self.lo_open and x == self.lo)):
            return False
        return self.hi is None or not (x > self.hi or (self.hi_open and x == self.hi))

    @staticmethod
    def _parse(value: Any) -> float | None:
        if isinstance(value, bool):
            return None
        if not isinstance(value, (str, int, float)):
            return None
        try:
            x = float(value.strip() if isinstance(value, str) else value)
        except (ValueError, OverflowError):  # OverflowError: an int too large for a float
            return None
        return x if math.isfinite(x) else None


class Bool:
    """true/false; text may also be 1/0, yes/no, on/off."""

    def describe(self) -> str:
        return "true or false"

    def __call__(self, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            text = value.strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
        raise _bad(self.describe(), value)


class Text:
    """Any string (without NUL characters, which no path or name may hold)."""

    def describe(self) -> str:
        return "a string"

    def __call__(self, value: Any) -> str:
        if not isinstance(value, str) or "\0" in value:
            raise _bad(self.describe(), value)
        return value


class Choice:
    """One of a fixed set of strings, or of a registry's names (``options`` may be a callable)."""

    def __init__(self, options: Iterable[str] | Callable[[], Iterable[str]]) -> None:
        self._options = options

    @property
    def options(self) -> list[str]:
        return list(self._options() if callable(self._options) else self._options)

    def describe(self) -> str:
        named = [o for o in self.options if o]
        return "one of " + ", ".join(named) + (" (or empty)" if len(named) < len(self.options) else "")

    def __call__(self, value: Any) -> str:
        if isinstance(value, str) and value in self.options:
            return value
        close = difflib.get_close_matches(value, self.options, n=1) if isinstance(value, str) else []
        raise ValueError(str(_bad(self.describe(), value)) + (f" (did you mean {close[0]!r}?)" if close else ""))


class Device:
    """'auto' or a torch device string: cpu, cuda, cuda:N, mps, ... (syntax only; see ``device_available``)."""

    PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")

    def describe(self) -> str:
        return "auto, cpu, cuda, cuda:N or mps"

    def __call__(self, value: Any) -> str:
        if isinstance(value, str) and self.PATTERN.fullmatch(value.strip()):
            return value.strip()
        raise _bad(self.describe(), value)


def device_problem(name: str) -> str | None:
    """Why device ``name`` cannot be used in this process, or None when it can ('auto' always can)."""
    import torch

    kind, _, index = name.partition(":")
    if kind == "cuda":
        if not torch.cuda.is_available():
            why = "no CUDA device is visible" if torch.version.cuda else "this PyTorch build has no CUDA support"
            return f"device {name!r} is not available: {why}; use --device cpu (or auto)"
        if index and int(index) >= torch.cuda.device_count():
            return f"device {name!r} is not available: {torch.cuda.device_count()} CUDA device(s) visible"
    if kind == "mps" and not torch.backends.mps.is_available():
        return f"device {name!r} is not available on this machine; use --device cpu (or auto)"
    return None


Check = Callable[[Any], Any]

# The arguments of generating and scoring: the Python API checks its keywords against this table
# (``check_arguments``) and ``gptv sample`` its flags (``argtypes.generation_arg``), so both accept
# and refuse the same values (the CLI keeps --max-new-tokens >= 1 and --temperature >= 0).
GENERATION_ARGS: dict[str, Check] = {
    "max_new_tokens": Int(0),
    "temperature": Float(),
    "top_k": Int(1),
    "top_p": Float(0.0, 1.0, lo_open=True),
    "repetition_penalty": Float(0.0, lo_open=True),
    "tau": Float(0.0, 1.0),
    "top_n": Int(0),
    "seed": Int(0),
    "slide": Int(1),
    "num_samples": Int(1),
    "unknown": Choice(("error", "skip")),
    "sig_mode": Choice(("normalize", "set")),
    "device": Device(),
}
OPTIONAL_ARGS = frozenset({"top_k", "top_p", "seed", "slide"})  # None: off / the default


def check_arguments(values: Mapping[str, Any], checks: Mapping[str, Check] = GENERATION_ARGS) -> dict[str, Any]:
    """``values`` checked against ``checks`` by name (names without a check pass as they are):
    InputError("top_k: expected an integer >= 1, got 2.5"). For Python callers: a number given
    as a string ('5') is refused (the CLI parses its text with the same checks), and None is
    accepted only for OPTIONAL_ARGS."""
    out = dict(values)
    for name, value in values.items():
        check = checks.get(name)
        if check is None or (value is None and name in OPTIONAL_ARGS):
            continue
        if isinstance(value, str) and isinstance(check, (Int, Float)):
            raise InputError(f"{name}: {_bad(check.describe(), value)} (a str; pass a number)")
        try:
            out[name] = check(value)
        except ValueError as e:
            raise InputError(f"{name}: {e}") from None
    return out
