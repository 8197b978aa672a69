"""The ``gptv`` parsers, one module per command group, none of which imports torch.

Each module's ``register_cli(subparsers)`` adds its parser and names its handler as
``Command("module:function")``, a module of ``apps.cli`` imported only when the command runs. So
``gptv --help``, ``gptv CMD --help`` and every argument error answer before torch loads; the
choices and defaults they show come from the registries' torch-free parts (``core.components``,
``predict.options`` ...), never from lists kept here.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

CLI = __package__.rpartition(".")[0]  # gptvariants.apps.cli, where the handlers live


def load(target: str) -> Any:
    """The function ``"module:function"`` of ``apps.cli``, importing its module."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(f"{CLI}.{module}"), name)


class Command:
    """A subcommand's handler, loaded when it runs. Running it first checks the run folder a ``--ckpt``
    names (``inputs.check_inputs``), then calls the handler with the parsed arguments (and, for
    commands that take them, the unparsed ``--key=value`` ones)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __call__(self, args: argparse.Namespace, *extra: list[str]) -> int:
        load("inputs:check_inputs")(args)
        return load(self.target)(args, *extra)

    def __repr__(self) -> str:
        return f"Command({self.target!r})"
