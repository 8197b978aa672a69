"""argparse ``type=`` functions: each turns a bad command-line value into argparse's one-line error.

``p.add_argument("--k", type=positive_int)`` makes ``--k 0`` fail with
``gptv targets: error: argument --k: expected an integer >= 1, got '0'`` (exit 2), before
any work starts. The ranges are those of ``checks``; NaN and infinities are always refused.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .checks import GENERATION_ARGS, Device, Float, Int, device_problem
from .inputs import InputError, read_text


def _argtype(check: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return check(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = parse.__qualname__ = name
    parse.check = check  # type: ignore[attr-defined]  # the constraint, for tests that generate values outside it
    return parse


positive_int = _argtype(Int(1), "positive_int")  # >= 1
non_negative_int = _argtype(Int(0), "non_negative_int")  # >= 0
finite_float = _argtype(Float(), "finite_float")  # any finite number
non_negative_float = _argtype(Float(0.0), "non_negative_float")  # finite, >= 0
positive_float = _argtype(Float(0.0, lo_open=True), "positive_float")  # finite, > 0
unit_interval = _argtype(Float(0.0, 1.0), "unit_interval")  # [0, 1]
probability_open_closed = _argtype(Float(0.0, 1.0, lo_open=True), "probability_open_closed")  # (0, 1]
probability_closed_open = _argtype(Float(0.0, 1.0, hi_open=True), "probability_closed_open")  # [0, 1)
open_unit_interval = _argtype(Float(0.0, 1.0, lo_open=True, hi_open=True), "open_unit_interval")  # (0, 1)
above_one = _argtype(Float(1.0, lo_open=True), "above_one")  # finite, > 1
at_least_two = _argtype(Int(2), "at_least_two")  # an integer >= 2


def generation_arg(name: str) -> Callable[[str], Any]:
    """The type of a generation option's flag: the check the Python API applies to the keyword
    ``name`` (``checks.GENERATION_ARGS``), so ``gptv sample`` and ``LanguageModel`` agree."""
    return _argtype(GENERATION_ARGS[name], name)


def device(text: str) -> str:
    """'auto' or a device this process can use (cuda on a build without CUDA is refused here)."""
    try:
        name = Device()(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    problem = None if name == "auto" else device_problem(name)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return name


device.check = Device()  # type: ignore[attr-defined]


def utf8_file(text: str) -> str:
    """The path of an existing, readable UTF-8 text file (read once here to check it)."""

    try:
        read_text(Path(text))
    except (InputError, OSError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text
