"""Output layers (heads), one module each, and their registry (``HEADS``, ``@register_head``).

``base.py`` states the contract every head follows (training draws, prediction logits, its own
``Config``, parameter count, optimizer groups, export layer, per-sequence draws); a new head is
a module here with one class and its ``@register_head("name")`` line, imported below.
"""

from .base import (
    HEADS,
    ExportRefused,
    Head,
    HeadSpec,
    PointLogits,
    RowDraws,
    build_head,
    register_head,
    sigmoid_bias_init,
)

# isort: off
# registration order is the order configs, `gptv variants` and errors list the heads in
from .linear import LinearHead
from .bayesian import BayesianHead
from .ensemble import HeadEnsemble

# isort: on

__all__ = [
    "HEADS",
    "BayesianHead",
    "ExportRefused",
    "Head",
    "HeadEnsemble",
    "HeadSpec",
    "LinearHead",
    "PointLogits",
    "RowDraws",
    "build_head",
    "register_head",
    "sigmoid_bias_init",
]
