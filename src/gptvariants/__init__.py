"""gptvariants: GPT language models with softmax, smoothed, Bayesian and sigmoid output layers.

    >>> import gptvariants
    >>> lm = gptvariants.load("runs/baseline")      # a LanguageModel
    >>> lm.generate("The king", max_new_tokens=20)

The public names below import torch and the model only when first used.
"""

from importlib import import_module as _import_module
from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("gptvariants")
except _metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

# public name -> the module that defines it
_LAZY = {"load": "apps.api", "LanguageModel": "apps.api", "TokenRecord": "apps.api", "Completion": "apps.api"}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(_import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'gptvariants' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
