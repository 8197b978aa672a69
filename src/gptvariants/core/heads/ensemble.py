"""K linear heads on one backbone (a deep ensemble that shares the backbone)."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn as nn

from ...common.errors import InputError
from ..components import EnsembleConfig, NoKeys
from ..objectives import fused_linear_loss
from .base import ExportRefused, Head, HeadSpec, RowDraws, register_head
from .linear import LinearHead


@register_head("ensemble")
class HeadEnsemble(Head):
    """K linear heads on one backbone, each initialised independently; the predictive averages the
    K readouts (a K-member deep ensemble that shares the backbone; Lakshminarayanan et al. 2017).

    Training, ``split`` (the default): position n of the flattened micro-batch trains member
    k = n mod K only, loss = 1/N sum_n objective(h_n W_{k(n)}^T + b_{k(n)}), so the K heads cost one
    head's matmuls, as BatchEnsemble (Wen et al. 2020) splits its batch among members; each member
    sees a different quarter of the data, which also decorrelates them. ``split=False``: every
    member on every position, loss = 1/K sum_k objective(h W_k^T + b_k), K times the head's cost.
    The token embedding, if tied, shares the first member's weights."""

    Config = EnsembleConfig

    def __init__(
        self, n_embd: int, vocab_size: int, k: int, bias: bool = False, bias_init: float = 0.0, split: bool = True
    ) -> None:
        super().__init__()
        if k < 1:
            raise InputError(f"ensemble_size must be >= 1, got {k}")
        self.members = nn.ModuleList(LinearHead(n_embd, vocab_size, bias, bias_init) for _ in range(k))
        self.split = split

    @classmethod
    def from_config(cls, spec: HeadSpec, cfg: EnsembleConfig) -> HeadEnsemble:
        return cls(
            spec.n_embd,
            spec.vocab_size,
            cfg.ensemble_size,
            bias=spec.bias,
            bias_init=spec.bias_init,
            split=cfg.ensemble_split,
        )

    @classmethod
    def num_parameters(cls, spec: HeadSpec, cfg: EnsembleConfig) -> int:
        """K linear heads: K (V C + V)."""
        return cfg.ensemble_size * LinearHead.num_parameters(spec, NoKeys())

    def export_layer(self) -> tuple[torch.Tensor, torch.Tensor | None, str]:
        raise ExportRefused(
            f"the ensemble head averages the distributions of its {len(self.members)} members, "
            "which no single GPT-2 output layer reproduces"
        )

    def sequence_sampler(self, rows: int, generator: torch.Generator | None = None) -> RowDraws:
        """One member per row, drawn uniformly (a draw of the ensemble), kept for the row's generation."""
        device = self.mean_weight.device
        pick = torch.randint(len(self.members), (rows,), generator=generator, device=device).tolist()
        w = torch.stack([self.members[k].weight.detach().float() for k in pick])
        b = None if self.members[0].bias is None else torch.stack([self.members[k].bias.detach().float() for k in pick])
        return RowDraws(w, b)

    def member(self, k: int) -> LinearHead:
        return cast(LinearHead, self.members[k])

    @property
    def mean_weight(self) -> nn.Parameter:
        return self.member(0).weight

    def weights(self, sample: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.member(0).weights()

    def loss(self, h, objective, y, sets, chunk_size=0, sample=False):

        K, zero = len(self.members), h.new_zeros((), dtype=torch.float32)
        if not self.split:
            return sum(
                fused_linear_loss(h, m.weight, m.bias, objective, y, sets, chunk_size) for m in self.members
            ) / K, zero
        h2, y2 = h.reshape(-1, h.shape[-1]), y.reshape(-1)
        s2 = None if sets is None else sets.reshape(-1, sets.shape[-1])
        total = zero
        for k, m in enumerate(self.members):  # member k: positions k, k + K, ...; weighted by its positions
            yk = y2[k::K]
            if len(yk):
                part = fused_linear_loss(
                    h2[k::K], m.weight, m.bias, objective, yk, None if s2 is None else s2[k::K], chunk_size
                )
                total = total + part * (yk >= 0).sum()
        return total / (y2 >= 0).sum().clamp(min=1), zero

    def n_draws(self, samples: int) -> int:
        return len(self.members)

    def logits(self, h: torch.Tensor, samples: int = 0, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.cat([self.member(k).logits(h) for k in range(len(self.members))])
