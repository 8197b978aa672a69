"""The project's error type: a mistake of the user's, reported as one line.

``gptv`` prints a ``GptvError`` (and an ``OSError`` about the user's files) as
``gptv COMMAND: error: message`` with exit code 2; every other exception is our bug and
keeps its traceback. The subclasses (``InputError``, ``ConfigError``, ``CheckpointError``,
``ExportError``, ``ServeError``, ``TrainingDiverged`` ...) also derive from ValueError or
RuntimeError, so callers that caught those keep working.
"""

from __future__ import annotations


class GptvError(Exception):
    """A user's mistake (a bad value, an unknown name, a missing or damaged file); the message says which."""


class InputError(GptvError, ValueError):
    """A value or file the user gave is unusable (out of range, an unknown name, unreadable, malformed)."""


class WrongType(InputError, TypeError):
    """A value of the wrong type for its argument (a TypeError too, for callers that catch one)."""


class UnavailableError(GptvError, RuntimeError):
    """Something the command needs is not at hand: an optional package, a download, a model on the hub."""


class UnknownSymbols(InputError):
    """Text with symbols outside a vocabulary tokenizer's; the hint names how the caller's front
    end drops them (the Python API's ``unknown='skip'``; a command re-raises ``hinting`` its flag)."""

    def __init__(self, what: str, hint: str = "pass unknown='skip'") -> None:
        self.what = what
        super().__init__(f"{what}; {hint} to drop them")

    def hinting(self, hint: str) -> UnknownSymbols:
        return UnknownSymbols(self.what, hint)
