"""The linear head: z = h W^T (+ b)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..components import NoKeys
from .base import Head, HeadSpec, register_head


@register_head("linear")
class LinearHead(Head):
    """z = h W^T (+ b). ``bias_init`` sets the starting bias (sigmoid heads use -log V)."""

    def __init__(self, n_embd: int, vocab_size: int, bias: bool = False, bias_init: float = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, n_embd))
        self.bias = nn.Parameter(torch.full((vocab_size,), float(bias_init))) if bias else None
        nn.init.normal_(self.weight, mean=0.0, std=0.02)

    @classmethod
    def from_config(cls, spec: HeadSpec, cfg: NoKeys) -> LinearHead:
        return cls(spec.n_embd, spec.vocab_size, bias=spec.bias, bias_init=spec.bias_init)

    @classmethod
    def num_parameters(cls, spec: HeadSpec, cfg: NoKeys) -> int:
        """V C weights + V biases."""
        return spec.vocab_size * (spec.n_embd + int(spec.bias))

    @property
    def mean_weight(self) -> nn.Parameter:
        return self.weight

    def weights(self, sample: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.weight, self.bias
