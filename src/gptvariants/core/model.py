"""The GPT-2 backbone with a pluggable output head and training objective.

One backbone serves every variant: token + learned position embeddings, pre-LayerNorm
blocks (causal self-attention through scaled_dot_product_attention, GELU MLP), a final
LayerNorm, then a head (``heads/``) whose weights the objective (``objectives.py``)
consumes in chunks. A KV cache makes generation cost O(T) per token instead of O(T^2); it keeps
one length per row, so rows of different lengths decode as one batch, each at its own positions.

MC dropout (``Backbone.mc_dropout``) runs the dropout layers with masks drawn in bulk: one
uniform draw per element, kept where u >= p (``bulk_dropout``), the distribution of
``nn.Dropout`` at a third of the cost of its Bernoulli draws on a CPU, where the fused SDPA
kernels also refuse dropout_p > 0 and torch's fallback costs ~6x a fused pass; on CUDA
attention keeps SDPA with its dropout_p. Training keeps ``nn.Dropout`` and SDPA unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig, ObjectiveConfig
from .heads import Head, HeadSpec, build_head
from .objectives import Objective, build_objective


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's has no bias=False before 2.1)."""

    def __init__(self, ndim: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


def bulk_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Dropout in distribution: x * [u >= p] / (1 - p), u ~ U[0, 1) per element (P(keep) = 1 - p)."""
    keep = torch.empty_like(x).uniform_().ge_(p)
    return x * keep / (1.0 - p)


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose masks, while ``bulk`` (MC dropout), come from ``bulk_dropout``."""

    bulk = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bulk and self.training and self.p > 0:
            return bulk_dropout(x, self.p)
        return super().forward(x)


def attention_with_dropout(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool, p: float
) -> torch.Tensor:
    """softmax(q k^T / sqrt(D) + mask) with ``bulk_dropout`` on the weights, times v: SDPA's
    dropout_p in distribution (mask True = attend; ``causal``: square lower-triangular)."""
    s = (q @ k.transpose(-2, -1)).mul_(1.0 / math.sqrt(q.shape[-1]))
    if causal:
        mask = torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).tril()
    if mask is not None:
        s.masked_fill_(~mask, float("-inf"))
    return bulk_dropout(torch.softmax(s, dim=-1), p) @ v


@dataclass
class CacheStep:
    """Where T new tokens per row go in a KVCache, computed once per forward pass for every layer.

    pos: their positions, (T,) when every row holds the same number of tokens (``start``), else
    (B, T). end: the cache entries attended to are [0, end). mask: (B, 1, T, end) or (T, end),
    True where a query may attend (each row's own entries up to its token); None when plain
    causal attention (or, for one token, attending to everything) is exact.
    """

    pos: torch.Tensor
    start: int | None
    end: int
    mask: torch.Tensor | None
    rows: torch.Tensor | None = None  # (B, 1) row indices for scattered writes


class KVCache:
    """Per-layer keys and values of the tokens seen so far, (B, H, max_len, D) each, and each row's
    length (``lengths``, kept on the host, which plans each step): the tokens it holds, which is
    also the position of its next token. Rows may hold different numbers of tokens; attention
    then masks each row's entries past its own length. Rows are dropped (``select``), appended
    (``extend``) and overwritten (``put``) between steps."""

    def __init__(self, n_layer: int, batch: int, n_head: int, max_len: int, head_dim: int, device, dtype) -> None:
        shape = (batch, n_head, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.lengths = [0] * batch
        self.max_len = max_len

    def reset(self) -> None:
        self.lengths = [0] * len(self.lengths)

    def advance(self, n: int | list[int]) -> None:
        """Count n more tokens in every row, or n[b] in row b."""
        steps = n if isinstance(n, list) else [n] * len(self.lengths)
        self.lengths = [a + b for a, b in zip(self.lengths, steps)]

    def select(self, rows: list[int]) -> None:
        """Keep only ``rows``, in that order."""
        index = torch.tensor(rows, dtype=torch.long, device=self.k[0].device)
        self.k = [k.index_select(0, index) for k in self.k]
        self.v = [v.index_select(0, index) for v in self.v]
        self.lengths = [self.lengths[r] for r in rows]

    def extend(self, other: KVCache) -> None:
        """Append the rows of ``other`` (a cache of the same model and max_len)."""
        self.k = [torch.cat([a, b]) for a, b in zip(self.k, other.k)]
        self.v = [torch.cat([a, b]) for a, b in zip(self.v, other.v)]
        self.lengths = self.lengths + other.lengths

    def put(self, rows: list[int], other: KVCache) -> None:
        """Overwrite ``rows`` with the rows of ``other``, in order."""
        index = torch.tensor(rows, dtype=torch.long, device=self.k[0].device)
        for mine, theirs in zip(self.k + self.v, other.k + other.v):
            mine.index_copy_(0, index, theirs)
        for r, n in zip(rows, other.lengths):
            self.lengths[r] = n

    def plan(self, T: int, device: torch.device) -> CacheStep:
        """The positions and mask of T tokens appended to every row (``CacheStep``)."""
        first = self.lengths[0] if self.lengths else 0
        end = max(self.lengths, default=0) + T
        if all(n == first for n in self.lengths):
            pos = torch.arange(first, first + T, device=device)
            mask = None if T == 1 or first == 0 else torch.ones(T, end, dtype=torch.bool, device=device).tril(first)
            return CacheStep(pos, first, end, mask)
        pos = torch.tensor(self.lengths)[:, None] + torch.arange(T)
        mask = torch.arange(end)[None, None, :] <= pos[:, :, None]
        rows = torch.arange(len(self.lengths), device=device)[:, None]
        return CacheStep(pos.to(device), None, end, mask[:, None].to(device), rows)

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor, step: CacheStep) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one layer's new keys and values (B, H, T, D) at ``step``; return the entries to attend to."""
        K, V = self.k[layer], self.v[layer]
        if step.start is not None:
            K[:, :, step.start : step.start + k.shape[2]] = k
            V[:, :, step.start : step.start + v.shape[2]] = v
        else:  # (B, T) positions: index (B, T, H, D)
            K[step.rows, :, step.pos] = k.transpose(1, 2)
            V[step.rows, :, step.pos] = v.transpose(1, 2)
        return K[:, :, : step.end], V[:, :, : step.end]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = Dropout(cfg.dropout)
        self.dropout = cfg.dropout
        self.bulk = False  # MC dropout's masks (module docstring)

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, step: CacheStep | None = None
    ) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        p = self.dropout if self.training else 0.0  # also with a cache: MC dropout decodes with it
        mask, causal = None, True  # causal: a right-padded row's tokens never see its padding
        if cache is not None:
            assert step is not None, "Backbone plans the step of every cached forward pass"
            k, v = cache.store(layer, k, v, step)
            mask, causal = step.mask, step.mask is None and T > 1  # a chunk into an empty cache
        if p > 0 and self.bulk and q.device.type != "cuda":
            y = attention_with_dropout(q, k, v, mask, causal, p)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = Dropout(cfg.dropout)
        self.approximate = "tanh" if cfg.gelu == "tanh" else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate=self.approximate)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(cfg.n_embd, cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = LayerNorm(cfg.n_embd, cfg.bias)
        self.mlp = MLP(cfg)

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, step: CacheStep | None = None
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer, step)
        return x + self.mlp(self.ln_2(x))


class Backbone(nn.Module):
    """Token ids (B, T) -> final hidden states (B, T, C)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = Dropout(cfg.dropout)
        self.h = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = LayerNorm(cfg.n_embd, cfg.bias)

    @contextmanager
    def mc_dropout(self) -> Iterator[None]:
        """A block in which dropout is active with masks drawn in bulk (module docstring), then eval mode."""
        layers = [m for m in self.modules() if isinstance(m, (Dropout, CausalSelfAttention))]
        for m in layers:
            m.bulk = True
        self.train()
        try:
            yield
        finally:
            self.eval()
            for m in layers:
                m.bulk = False

    def forward(
        self, idx: torch.Tensor, cache: KVCache | None = None, lengths: list[int] | None = None
    ) -> torch.Tensor:
        """With a cache, the T tokens of each row are appended to it at that row's own positions.
        ``lengths`` (B,): how many of them are real when rows are right-padded (a prefill of
        prompts of different lengths into an empty cache); the rest are not kept."""
        T = idx.shape[1]
        step = cache.plan(T, idx.device) if cache is not None else None
        end = step.end if step is not None else T
        if end > self.cfg.block_size:
            raise ValueError(f"sequence of {end} tokens exceeds block_size {self.cfg.block_size}")
        if cache is not None and end > cache.max_len:
            raise ValueError(f"sequence of {end} tokens exceeds the cache's {cache.max_len}")
        pos = step.pos if step is not None else torch.arange(T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for i, block in enumerate(self.h):
            x = block(x, cache, i, step)
        if cache is not None:
            cache.advance(T if lengths is None else lengths)
        return self.ln_f(x)


@dataclass
class Output:
    loss: torch.Tensor  # the training objective: objective + kl_beta * KL / N
    objective: torch.Tensor  # the objective's mean over positions
    kl: torch.Tensor  # KL(q || p) summed over the head's weights (0 for deterministic heads)


class GPT(nn.Module):
    """Backbone + head + objective. ``forward`` returns the training loss; ``logits`` predicts."""

    def __init__(self, cfg: ModelConfig, obj: ObjectiveConfig) -> None:
        super().__init__()
        assert cfg.vocab_size > 0, "vocab_size must be set (from the data) before building the model"
        self.config, self.obj_config = cfg, obj
        self.transformer = Backbone(cfg)
        self.objective: Objective = build_objective(obj.objective, obj.objective_config())
        spec = HeadSpec(cfg.n_embd, cfg.vocab_size, obj.output_bias, self.objective.sigmoid)
        self.head: Head = build_head(obj.head, spec, obj.head_config())
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2: scale residual projections by 1/sqrt(2 n_layer)
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))
        if cfg.tie_weights:
            self.transformer.wte.weight = self.head.mean_weight

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def bayesian(self) -> bool:
        """The head has a posterior to sample (its ``logits(h, samples)`` draws)."""
        return self.head.stochastic

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; the position embedding is excluded by default (as in nanoGPT)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor,
        sets: torch.Tensor | None = None,
        n_train_tokens: int = 0,
        kl_scale: float = 1.0,
    ) -> Output:
        """The ELBO-style training loss: objective(h, W, b) + kl_scale * kl_beta * KL(q || p) / n_train_tokens.

        Dividing the KL by the number of training tokens makes the sum of per-token losses over
        one pass of the data equal beta * KL + sum of objectives, i.e. the negative ELBO, while
        the value per token stays on the objective's scale. ``kl_scale`` in [0, 1] is the KL
        warm-up (``kl_weight``).
        """
        h = self.transformer(idx)
        obj, kl = self.head.loss(
            h, self.objective, targets, sets, self.obj_config.loss_chunk_size, sample=self.training
        )
        loss = obj
        if self.obj_config.kl_beta > 0 and self.head.stochastic:
            loss = obj + kl_scale * self.obj_config.kl_beta * kl / max(n_train_tokens, 1)
        return Output(loss=loss, objective=obj.detach(), kl=kl.detach())

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """The head's point-estimate logits for hidden states h (..., C), fp32."""
        return self.head.logits(h.reshape(-1, h.shape[-1]))[0].view(*h.shape[:-1], -1)

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        c = self.config
        p = self.transformer.wte.weight  # the first parameter: next(self.parameters()) walks the module tree
        return KVCache(c.n_layer, batch, c.n_head, max_len or c.block_size, c.n_embd // c.n_head, p.device, p.dtype)

    def kl_weight(self, step: int) -> float:
        """The KL warm-up factor at ``step``: min(1, step / kl_warmup_iters) (1 without warm-up)."""
        warmup = self.obj_config.kl_warmup_iters
        return 1.0 if warmup <= 0 else min(1.0, step / warmup)

    def configure_optimizer(
        self, weight_decay: float, learning_rate: float, betas: tuple[float, float], device_type: str
    ):
        """AdamW with decay on matrices and none on biases/norms, then the groups the head asks for
        (``Head.optimizer_groups``, e.g. a Bayesian head's rho), each at ``lr_mult`` times the
        schedule's learning rate. The order of the groups is the one saved optimizer states expect."""
        own = self.head.optimizer_groups()
        claimed = {id(p) for g in own for p in g["params"]}
        params = [p for p in self.parameters() if p.requires_grad and id(p) not in claimed]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        for g in own:
            groups.append({**g, "lr": learning_rate * g.get("lr_mult", 1.0)})
        # the fused kernel (CUDA, and CPU since torch 2.4) does the whole update in one pass per
        # tensor; the default loop makes ~7 passes, which shows on the Bayesian head's 2x weights
        fused = device_type in ("cuda", "cpu")
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)

    def estimate_mfu(self, tokens_per_s: float, peak_flops: float) -> float:
        """Model FLOPs utilisation (PaLM appendix B): 6N + 12 L H Q T FLOPs per token."""
        c = self.config
        N = self.num_params()
        L, H, Q, T = c.n_layer, c.n_head, c.n_embd // c.n_head, c.block_size
        flops_per_token = 6 * N + 12 * L * H * Q * T
        return flops_per_token * tokens_per_s / peak_flops
