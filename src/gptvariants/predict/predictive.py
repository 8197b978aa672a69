"""The predictive distribution of a run: computed here, and only here, for every consumer.

Training evaluation, ``gptv eval``, ``gptv sample``, the Python API, ``ckpt:`` teachers and the
lm-eval model all ask a ``Predictor`` for the distribution of the next token. It is a mixture
of S draws, each a readout of one set of logits:

    p(v | x) = 1/S sum_s p_s(v | x),    p_s = readout(z_s / T)

readout  softmax, a sigmoid head's normalised readout, or entmax's eps-smoothed sparse p
         (``Objective.log_probs``).
T        the member's temperature (1 unless fitted by ``gptv calibrate``); it scales the logits
         before the readout, for sigmoid heads too.
z_s      the draws. They come from the head (a Bayesian head's weight posterior, the members of
         an ensemble of heads: ``Head.logits(h, samples)``), from the backbone (MC dropout: the
         backbone runs once per draw with dropout active), or from several runs (an ensemble of
         runs: one member each). ``samples=0`` asks every head for its point estimate.

Logit scores (``Draws.logit_stats``, asked for by ``logit_stats=True``) read the mean of the draws'
logits, zbar = 1/S sum_s z_s (one draw: its logits; a Bayesian head: a Monte Carlo estimate of the
posterior-mean logits; K heads or runs: their logit average), after the temperature:
    energy     -logsumexp_v u_v (Liu et al. 2020), u = the readout's unnormalised log-scores:
               u = zbar for softmax (the log-normaliser); u = log sigmoid(zbar) for sigmoid heads,
               so energy = -log sum_v sigmoid(zbar_v), minus the log of the expected set size
    max_logit  max_v zbar_v (Hendrycks et al. 2022): the top logit, a sigmoid head's top log-odds
Higher energy and lower max_logit mean less familiar input.

The entropy of the mixture splits into the expected entropy of the draws (aleatoric) and the
mutual information between the next token and the draw (epistemic):
    H[p] = 1/S sum_s H[p_s] + MI.

``score_windows`` scores a token stream through any window plan (evaluation's strided sliding
windows, generation's policy) without holding (tokens, V): hidden states are read out one chunk
of rows at a time.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from .. import metrics as M
from ..common.errors import InputError
from ..core.model import GPT
from .density import FeatureDensity


class Sampler(Protocol):
    """A member's own logit sampler (``Member.sampler``): (h (n, C), samples, generator) -> (S, n, V)
    fp32 logits, and the S it gives for ``samples``. It may also set ``random = False`` when its
    draws were made beforehand (``Member.draws_randomly``)."""

    def __call__(self, h: torch.Tensor, samples: int, generator: torch.Generator | None, /) -> torch.Tensor: ...

    def n_draws(self, samples: int) -> int: ...


CHUNK_FLOATS = 2**23  # ~32 MiB of fp32 (n, V) values per draw and chunk
DROPOUT_FLOATS = 2**26  # ~256 MiB of activations per batched MC dropout forward pass
Generators = torch.Generator | list[torch.Generator] | None  # one stream, or one per row


def run_mc_samples(model: GPT) -> int:
    """The draws a run asks of a random method when the caller names none: its config's mc_samples."""
    return model.obj_config.mc_samples


@dataclass
class Member:
    """One model of the mixture, with its temperature and, optionally, its own logit ``Sampler``
    (a fitted Laplace posterior, one weight draw per generated row, ...), and the feature density
    ``gptv density`` fitted to its run (scored by ``gptv eval`` on the first backbone pass)."""

    model: GPT
    temperature: float = 1.0
    sampler: Sampler | None = None
    density: FeatureDensity | None = None

    def default_samples(self) -> int:
        """Draws asked of a stochastic head (or sampler) when the caller names none: the run's mc_samples."""
        return run_mc_samples(self.model) if self.model.head.stochastic or self.sampler else 0

    def n_draws(self, samples: int) -> int:
        return (self.sampler or self.model.head).n_draws(samples)

    def draws_randomly(self, samples: int) -> bool:
        """Whether ``logits`` draws from a generator: a stochastic head or a sampler asked for
        draws (a sampler whose ``random`` is False made its draws beforehand)."""
        if samples == 0:
            return False
        return getattr(self.sampler, "random", True) if self.sampler is not None else self.model.head.stochastic

    def logits(self, h: torch.Tensor, samples: int, generator: Generators) -> torch.Tensor:
        """(S, n, V) draws at h (n, C). ``generator``: one for all rows, or a list of one per row,
        so that each row's draws come from its own stream and do not depend on the other rows."""
        draw = self.sampler or self.model.head.logits
        if isinstance(generator, list) and self.draws_randomly(samples):
            z = torch.cat([draw(h[j : j + 1], samples, g) for j, g in enumerate(generator)], dim=1)
        else:
            z = draw(h, samples, None if isinstance(generator, list) else generator)
        return z if self.temperature == 1.0 else z / self.temperature


class Draws:
    """S draws of the predictive distribution at n positions.

    log_ps (S, n, V): log p_s; ``log_p`` (n, V): log of their mean. ``set_probs`` (n, V) when
    asked for: the per-token membership scores behind set predictions, mean_s sigmoid(z_s) for
    sigmoid readouts and mean_s p_s for softmax ones. ``scores`` (n, V): what sampling filters
    act on, with softmax(scores) = p: the logits of a single softmax draw, log p otherwise
    (a single entmax draw: log of its sparse p, ``Objective.sampling_scores``).
    """

    def __init__(
        self, log_ps: torch.Tensor, set_probs: torch.Tensor | None = None, logits: torch.Tensor | None = None
    ) -> None:
        self.log_ps = log_ps
        self.set_probs = set_probs
        self._logits = logits
        self.hidden: list[torch.Tensor] | None = None  # the hidden states read out, when the caller keeps them
        self.logit_stats: dict[str, torch.Tensor] = {}  # energy, max_logit (n,) when asked for (module docstring)
        if log_ps.shape[0] == 1:
            self._ps, self.probs = None, log_ps[0].exp()
            self.log_p = log_ps[0]
        else:  # the mixture in probability space: one exp pass over the draws serves p and their entropies
            self._ps = log_ps.exp()
            self.probs = self._ps.mean(0)
            self.log_p = self.probs.clamp_min(torch.finfo(self.probs.dtype).tiny).log()

    @property
    def samples(self) -> int:
        return self.log_ps.shape[0]

    @property
    def scores(self) -> torch.Tensor:
        return self._logits if self._logits is not None else self.log_p

    def entropy(self) -> torch.Tensor:
        """H[p] (n,), nats."""
        return M.entropy(self.probs)

    def expected_entropy(self) -> torch.Tensor:
        """1/S sum_s H[p_s] (n,), as -1/S sum_s <p_s, log p_s> (one fused dot product per draw and row)."""
        if self._ps is None:
            return self.entropy()
        return -torch.linalg.vecdot(self._ps, self.log_ps).mean(0)

    def mutual_information(self) -> torch.Tensor:
        """H[p] - 1/S sum_s H[p_s] (n,): >= 0 by Jensen's inequality; rounding below 0 reads 0."""
        return (self.entropy() - self.expected_entropy()).clamp_min(0.0)

    def token_stats(self, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """metrics.token_stats of p for targets y (n,), plus expected entropy and MI over the draws."""
        stats = M.token_stats(self.probs, y)
        stats["expected_entropy"] = self.expected_entropy()
        stats["mutual_information"] = (stats["entropy"] - stats["expected_entropy"]).clamp_min(0.0)
        return stats

    def logprob(self, y: torch.Tensor) -> torch.Tensor:
        """log p(y) (n,)."""
        return self.log_p.gather(-1, y.long()[:, None]).squeeze(-1)


class Predictor:
    """The predictive distribution of one model or a mixture of members (module docstring).

    samples: head draws per member; None = the run's ``mc_samples`` for stochastic heads (their
    point estimate otherwise), 0 = every head's point estimate. dropout_samples: MC dropout,
    the backbone runs this many times per member with dropout active (0 = off). seed: makes
    every draw reproducible.
    """

    def __init__(
        self,
        members: Sequence[Member | GPT],
        *,
        samples: int | None = None,
        dropout_samples: int = 0,
        seed: int | None = None,
    ) -> None:
        self.members = [m if isinstance(m, Member) else Member(m) for m in members]
        if not self.members:
            raise ValueError("a predictor needs at least one model")
        first = self.members[0].model.config
        for m in self.members[1:]:
            c = m.model.config
            if (c.vocab_size, c.block_size) != (first.vocab_size, first.block_size):
                raise InputError(
                    f"members disagree: vocab_size/block_size {c.vocab_size}/{c.block_size} vs "
                    f"{first.vocab_size}/{first.block_size}"
                )
        if samples is not None and samples < 0:
            raise InputError(f"samples must be >= 0, got {samples}")
        if dropout_samples < 0:
            raise InputError(f"dropout_samples must be >= 0, got {dropout_samples}")
        for m in self.members if dropout_samples else []:
            if m.model.config.dropout <= 0:
                raise InputError("MC dropout needs a model trained with dropout > 0; this run has dropout = 0")
        self.samples, self.dropout_samples = samples, dropout_samples
        device = self.device
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed if seed is not None else int(torch.randint(2**62, (1,)).item()))
        self._dropout_seeds = torch.Generator().manual_seed(self.generator.initial_seed() + 1)

    # ------------------------------------------------------------------------- properties

    @property
    def model(self) -> GPT:
        """The first member's model (shape, tokenizer-facing properties)."""
        return self.members[0].model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def block_size(self) -> int:
        return self.model.config.block_size

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size

    @property
    def sigmoid(self) -> bool:
        return any(m.model.objective.sigmoid for m in self.members)

    def samples_of(self, member: Member) -> int:
        """Draws asked of ``member``'s head per backbone pass (0 = its point estimate)."""
        return member.default_samples() if self.samples is None else self.samples

    @property
    def replicas(self) -> list[tuple[Member, bool]]:
        """(member, dropout active) per backbone pass."""
        if self.dropout_samples:
            return [(m, True) for m in self.members for _ in range(self.dropout_samples)]
        return [(m, False) for m in self.members]

    @property
    def n_draws(self) -> int:
        """S: the number of draws in the mixture."""
        return sum(m.n_draws(self.samples_of(m)) for m, _ in self.replicas)

    def rows_per_chunk(self, budget: int = CHUNK_FLOATS) -> int:
        """Rows whose S draws of (rows, V) values fit in ``budget`` floats."""
        return max(1, budget // (self.n_draws * self.vocab_size))

    # ------------------------------------------------------------------------- computing

    def new_caches(self, batch: int, max_len: int | None = None) -> list:
        return [m.model.new_cache(batch, max_len) for m, _ in self.replicas]

    @torch.no_grad()
    def encode(
        self, x: torch.Tensor, caches: Sequence | None = None, lengths: list[int] | None = None
    ) -> list[torch.Tensor]:
        """Final hidden states (B, T, C) of token ids x (B, T), one per backbone pass. With caches,
        ``lengths`` (B,) counts the real tokens of right-padded rows (``model.Backbone``). Without
        caches, MC dropout's passes of a member run batched (``_dropout_passes``)."""
        if caches is None and self.dropout_samples:
            return [h for m in self.members for h in self._dropout_passes(m.model, x)]
        out = []
        for r, (member, dropout) in enumerate(self.replicas):
            cache = caches[r] if caches is not None else None
            with self._dropout_active(member.model) if dropout else nullcontext():
                out.append(member.model.transformer(x, cache, lengths))
        return out

    @contextmanager
    def fixed_weights(self) -> Iterator[None]:
        """A block in which the members' weights do not change: heads may keep what they derive
        from them (``BayesianHead.kept_variance``) instead of deriving it per call."""
        with ExitStack() as stack:
            for m in self.members:
                stack.enter_context(m.model.head.kept_variance())
            yield

    def _dropout_passes(self, model: GPT, x: torch.Tensor, budget: int = DROPOUT_FLOATS) -> list[torch.Tensor]:
        """``dropout_samples`` hidden states (B, T, C) of x under MC dropout, as few forward passes over
        stacked copies of x as fit ``budget`` floats of activations (the larger of the attention
        weights and their masks, 3 H T^2, and the MLP's 4 C per position and copy)."""
        B, T = x.shape
        c = model.config
        copies = max(1, budget // (B * T * max(3 * c.n_head * T, 4 * c.n_embd)))
        out: list[torch.Tensor] = []
        for done in range(0, self.dropout_samples, copies):
            k = min(copies, self.dropout_samples - done)
            with self._dropout_active(model):
                out.extend(model.transformer(x.repeat(k, 1)).view(k, B, T, -1).unbind(0))
        return out

    @contextmanager
    def _dropout_active(self, model: GPT) -> Iterator[None]:
        """Dropout on (masks drawn in bulk, ``Backbone.mc_dropout``) for one backbone pass, its
        randomness drawn from this predictor's seed."""
        device = next(model.parameters()).device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(int(torch.randint(2**62, (1,), generator=self._dropout_seeds)))
            with model.transformer.mc_dropout():
                yield

    @torch.no_grad()
    def draws(
        self,
        hs: Sequence[torch.Tensor],
        *,
        set_probs: bool = False,
        generators: Generators = None,
        logit_stats: bool = False,
    ) -> Draws:
        """The predictive at hidden states ``hs`` (one (n, C) per backbone pass, as ``encode``).
        ``generators``: one per row makes each row's draws its own (``Member.logits``); default:
        this predictor's generator. MC dropout's masks are drawn in ``encode``, over the batch.
        ``logit_stats``: also the energy and max-logit of the draws' mean logits (module docstring)."""
        log_ps, sets = [], []
        z, z_sum = None, None
        for member, z in self._readouts(hs, generators):
            log_ps.append(member.model.objective.log_probs(z))
            if set_probs:
                q = torch.sigmoid(z) if member.model.objective.sigmoid else log_ps[-1].exp()
                sets.append(q.sum(0))
            if logit_stats and len(hs) * z.shape[0] > 1:
                z_sum = z.float().sum(0) if z_sum is None else z_sum + z.float().sum(0)
        assert z is not None  # __init__ refuses no members, and zip(strict=True) gives one h per replica
        lp = torch.cat(log_ps)
        single = len(hs) == 1 and z.shape[0] == 1
        scores = self.members[0].model.objective.sampling_scores(z[0]) if single else None
        out = Draws(lp, torch.stack(sets).sum(0) / lp.shape[0] if set_probs else None, scores)
        if logit_stats:
            out.logit_stats = self._logit_stats(z[0].float() if z_sum is None else z_sum / lp.shape[0])
        return out

    def _logit_stats(self, z_mean: torch.Tensor) -> dict[str, torch.Tensor]:
        """energy and max_logit (n,) of the draws' mean logits (n, V) (module docstring)."""
        u = torch.nn.functional.logsigmoid(z_mean) if self.sigmoid else z_mean
        return {"energy": -torch.logsumexp(u, dim=-1), "max_logit": z_mean.amax(dim=-1)}

    def _readouts(self, hs: Sequence[torch.Tensor], generators: Generators) -> Iterator[tuple[Member, torch.Tensor]]:
        """(member, logits (S, n, V)) per group of hidden states read out together: one per backbone
        pass, except that MC dropout's passes of a member are read out as one matmul over their
        stacked rows (read apart, each chunk of rows would re-read the (V, C) weights per pass)."""
        generator = self.generator if generators is None else generators
        if not self.dropout_samples or isinstance(generators, list):
            for (member, _), h in zip(self.replicas, hs, strict=True):
                yield member, member.logits(h, self.samples_of(member), generator)
            return
        k = self.dropout_samples
        assert len(hs) == k * len(self.members), "one hidden state per backbone pass (``encode``)"
        for i, member in enumerate(self.members):
            n = hs[i * k].shape[0]
            z = member.logits(torch.cat(list(hs[i * k : (i + 1) * k])), self.samples_of(member), generator)
            yield member, z.view(z.shape[0], k, n, -1).transpose(0, 1).reshape(-1, n, z.shape[-1])

    @torch.no_grad()
    def nll(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """-log p(y_t | x_<=t) per position, (B, T), for token ids x and next tokens y (B, T)."""
        return self.nll_of(self.encode(x), y)

    @torch.no_grad()
    def nll_of(self, hs: Sequence[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        """``nll`` from hidden states already computed by ``encode``."""
        flat = [h.reshape(-1, h.shape[-1]) for h in hs]
        y2 = y.reshape(-1)
        out = torch.empty(y2.shape, dtype=torch.float32, device=y.device)
        rows = self.rows_per_chunk()
        with self.fixed_weights():
            for s in range(0, len(y2), rows):
                out[s : s + rows] = -self.draws([h[s : s + rows] for h in flat]).logprob(y2[s : s + rows])
        return out.view(y.shape)


def score_windows(
    predictor: Predictor,
    tokens: np.ndarray | torch.Tensor | Sequence[int],
    windows: Sequence[tuple[int, int, int]],
    *,
    batch: int = 16,
    set_probs: bool = False,
    budget: int = CHUNK_FLOATS,
    logit_stats: bool = False,
) -> Iterator[tuple[int, torch.Tensor, Draws]]:
    """Score a token stream: yield (t, y, draws) for the targets y of the windows, in order.

    windows: (begin, end, score_from) triples (``metrics.sliding_windows`` or generation's
    policy): x = tokens[begin : end - 1] is fed, and targets score_from .. end - 1 are scored.
    When the windows' scored ranges follow each other (both policies), y = tokens[t : t + n];
    for windows spread over a stream, y still holds each window's own targets and t the first.
    Up to ``batch`` consecutive windows share one forward pass, the shorter ones right-padded:
    under causal attention no position sees the padding after it, so each window's hidden states
    are its own (the texts of ``LanguageModel.score_many`` end in windows of different lengths).
    Hidden states are read out ``predictor.rows_per_chunk(budget)`` rows at a time
    (``draws.hidden`` holds them); ``logit_stats`` asks each chunk's ``Draws.logit_stats``.
    """
    device = predictor.device
    ids = torch.as_tensor(np.asarray(tokens, dtype=np.int64)) if not isinstance(tokens, torch.Tensor) else tokens.long()
    ids = ids.to(device)
    rows = predictor.rows_per_chunk(budget)
    for i in range(0, len(windows), batch):
        group = windows[i : i + batch]
        x = torch.zeros((len(group), max(e - 1 - b for b, e, _ in group)), dtype=torch.long, device=device)
        for k, (b, e, _) in enumerate(group):
            x[k, : e - 1 - b] = ids[b : e - 1]
        # window (b, e, s): position p of x predicts tokens[b + p + 1]; targets s..e-1 are scored
        hs = [
            torch.cat([h[k, s - b - 1 : e - b - 1] for k, (b, e, s) in enumerate(group)]) for h in predictor.encode(x)
        ]
        ys = torch.cat([ids[s:e] for _, e, s in group])
        t0 = group[0][2]
        with predictor.fixed_weights():  # over one batch's chunks: nobody trains while reading a pass
            for c in range(0, len(hs[0]), rows):
                n = min(rows, len(hs[0]) - c)
                chunk = [h[c : c + n] for h in hs]
                draws = predictor.draws(chunk, set_probs=set_probs, logit_stats=logit_stats)
                draws.hidden = chunk
                yield t0 + c, ys[c : c + n], draws
