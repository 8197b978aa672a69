"""Sampling from a trained GPT: KV-cached, batched, sliding past block_size, for every head.

Context-window policy
    Position embeddings are learned and absolute (0 .. block_size-1), so a full cache cannot
    just drop its oldest entry: every remaining key/value was computed at a position that would
    now be off by one. Instead, when the next token would make the context longer than
    block_size, the context is cut to its last ``keep = block_size - slide`` tokens, which are
    re-encoded (prefilled) from position 0; it then grows one token per step until it is full
    again. ``slide`` defaults to block_size // 4, so the re-prefill (keep tokens) is paid once
    every slide + 1 tokens. A prompt longer than block_size keeps its last block_size tokens.
    The uncached path (``use_cache=False``) feeds exactly the same windows, recomputed at every
    step, so both paths condition on the same tokens at the same positions and greedy decoding
    gives the same output; ``window_start`` is the policy, shared with ``api.LanguageModel.score``.

One decoding step, per row
    1. the predictive distribution p of the next token (``predictive.Predictor.draws``): softmax,
       a sigmoid head's normalised readout per row (the study normalised over the whole batch),
       or the mixture of S draws (Bayesian ``step`` mode, MC dropout, ensembles).
    2. scores, with softmax(scores) = p: the raw logits for a single softmax draw, log p
       otherwise. The CTRL repetition penalty acts on them.
    3. sigmoid ``set`` mode keeps only the tokens with sigmoid(z) > tau (draw-averaged), the
       scores of the others become -inf; if no token clears tau, the argmax of sigmoid(z).
    4. greedy (``greedy=True`` or temperature <= 0): argmax of the scores; otherwise scores /
       temperature, then top-k, then top-p (nucleus), then one draw from the result.
    Reported details (probability of the chosen token, entropy, mutual information, the top
    alternatives, a sigmoid head's set, the chosen token's probability under each draw)
    describe the model's predictive p of step 1, not the filtered distribution that was sampled.

Bayesian heads (``bayes_mode``)
    ``mean``: the posterior mean weights. ``sequence``: one weight draw per row, kept for its
    whole generation. ``step``: S = mc_samples draws of the logits at every step (local
    reparameterisation, ``heads.BayesianHead.logits``), from one backbone pass. Any other
    predictive (MC dropout, ensembles, a fitted temperature) is passed in as a ``Predictor``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .predictive import Draws, Member, Predictor

BAYES_MODES = ("mean", "step", "sequence")
SIG_MODES = ("normalize", "set")


# ---------------------------------------------------------------------------------------------
# the context-window policy


def default_slide(block_size: int) -> int:
    return max(1, block_size // 4)


def window_start(start: int, length: int, block_size: int, keep: int) -> int:
    """Where the context of a sequence of ``length`` tokens begins, given where it began before.

    The context is tokens[start:length]; once it would exceed block_size it restarts with the
    last ``keep`` tokens (see the module docstring).
    """
    return length - keep if length - start > block_size else start


def keep_tokens(block_size: int, slide: int | None) -> int:
    """Tokens kept when the window slides (block_size - slide, at least 1)."""
    slide = default_slide(block_size) if slide is None else slide
    if not 1 <= slide <= block_size:
        raise ValueError(f"slide must be in [1, block_size={block_size}], got {slide}")
    return max(1, block_size - slide)


class ContextWindow:
    """B sequences of equal length as the backbone sees them, one appended token at a time.

    ``hidden`` holds the final hidden state (B, C) of the last token, one per backbone pass of
    the predictor, from which the next token is predicted. With ``use_cache`` the keys/values
    live in KV caches and a step costs one token's forward pass; without, the whole current
    window is recomputed each step.
    """

    def __init__(self, predictor: Predictor, tokens: torch.Tensor, *, use_cache: bool = True,
                 slide: int | None = None, capacity: int = 0) -> None:
        B, n = tokens.shape
        self.predictor = predictor
        self.block_size = predictor.block_size
        self.keep = keep_tokens(self.block_size, slide)
        self.buf = tokens.new_empty(B, n + capacity)  # the full history, so a slide can re-prefill
        self.buf[:, :n] = tokens
        self.n = n
        self.start = max(0, n - self.block_size)
        self.caches = predictor.new_caches(B, self.block_size) if use_cache else None
        self.hidden = self._encode()

    @property
    def context(self) -> torch.Tensor:
        return self.buf[:, self.start : self.n]

    def _encode(self) -> list[torch.Tensor]:
        for cache in self.caches or []:
            cache.reset()
        return [h[:, -1] for h in self.predictor.encode(self.context, self.caches)]

    def append(self, tokens: torch.Tensor) -> None:
        """Add one token per row (B,) and update ``hidden``."""
        if self.n == self.buf.shape[1]:  # out of preallocated room: grow (only when capacity was short)
            self.buf = torch.cat([self.buf, self.buf.new_empty(self.buf.shape[0], max(self.n, 16))], dim=1)
        self.buf[:, self.n] = tokens
        self.n += 1
        start = window_start(self.start, self.n, self.block_size, self.keep)
        if start != self.start or self.caches is None:
            self.start = start
            self.hidden = self._encode()
        else:
            self.hidden = [h[:, -1] for h in self.predictor.encode(tokens[:, None], self.caches)]


def predictor_for(model, bayes_mode: str = "mean", mc_samples: int | None = None, rows: int = 1,
                  seed: int | None = None) -> Predictor:
    """The predictor of a bare model under a Bayesian ``bayes_mode`` (module docstring)."""
    if bayes_mode not in BAYES_MODES:
        raise ValueError(f"bayes_mode must be one of {BAYES_MODES}, got {bayes_mode!r}")
    if bayes_mode != "mean" and not model.head.stochastic:
        raise ValueError(f"bayes_mode={bayes_mode!r} needs a Bayesian head; this model's head is deterministic (use 'mean')")
    if mc_samples is not None and mc_samples < 1:
        raise ValueError(f"mc_samples must be >= 1, got {mc_samples}")
    if bayes_mode == "mean":
        return Predictor([model], samples=0, seed=seed)
    if bayes_mode == "step":
        return Predictor([model], samples=mc_samples or model.obj_config.mc_samples, seed=seed)
    predictor = Predictor([model], samples=1, seed=seed)
    predictor.members = [Member(model, sampler=model.head.sequence_sampler(rows, predictor.generator))]
    return predictor


# ---------------------------------------------------------------------------------------------
# processing the scores


def apply_repetition_penalty(scores: torch.Tensor, present: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty (Keskar et al., 2019): for tokens already present (bool (B, V)) divide a
    positive score by ``penalty`` and multiply a negative one, so penalty > 1 always lowers them.

    On log-probabilities (sigmoid heads, MC averages) every score is negative, so the penalty
    multiplies the log-probability of each present token.
    """
    if penalty == 1.0:
        return scores
    penalised = torch.where(scores > 0, scores / penalty, scores * penalty)
    return torch.where(present, penalised, scores)


def top_k_filter(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Scores outside the k largest of each row set to -inf (ties with the k-th are kept)."""
    if k >= scores.shape[-1]:
        return scores
    kth = torch.topk(scores, k, dim=-1).values[..., -1:]
    return scores.masked_fill(scores < kth, float("-inf"))


def top_p_filter(scores: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the most probable tokens of softmax(scores) whose cumulative
    probability first reaches ``p`` (at least one token); the others become -inf."""
    if p >= 1.0:
        return scores
    probs = torch.softmax(scores, dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    before = sorted_p.cumsum(-1) - sorted_p  # mass of the more probable tokens
    drop_sorted = before >= p
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return scores.masked_fill(drop, float("-inf"))


def sampling_probs(scores: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """The distribution one samples from: softmax of scores / temperature after top-k, then top-p."""
    if temperature <= 0:
        raise ValueError("temperature <= 0 means greedy decoding; take the argmax instead")
    scores = scores / temperature
    if top_k is not None:
        scores = top_k_filter(scores, top_k)
    if top_p is not None:
        scores = top_p_filter(scores, top_p)
    return torch.softmax(scores, dim=-1)


# ---------------------------------------------------------------------------------------------
# generation


@dataclass
class Generation:
    """One row's output: the new tokens (the prompt and a stop token are not included) and, per
    token when details were asked for, the model's probability of it (and its log), the
    predictive entropy (nats), the mutual information (nats; None with a single draw), and with
    ``top_n``: the ``top_n`` most probable tokens as (id, prob), a sigmoid head's set
    {v : sigmoid(z_v) > tau} (draw-averaged), and the chosen token's probability under each
    draw. ``finish_reason``: 'length', 'stop_token' or 'stop_fn'."""

    tokens: list[int] = field(default_factory=list)
    prob: list[float] = field(default_factory=list)
    logprob: list[float] = field(default_factory=list)
    entropy: list[float] = field(default_factory=list)
    mi: list[float] | None = None
    top: list[list[tuple[int, float]]] | None = None
    sets: list[list[int]] | None = None
    draws: list[list[float]] | None = None
    finish_reason: str = "length"


@dataclass
class _Options:
    greedy: bool
    temperature: float
    top_k: int | None
    top_p: float | None
    repetition_penalty: float
    stop_tokens: frozenset[int]
    stop_fn: Callable[[int, list[int]], bool] | None
    use_cache: bool
    slide: int | None
    sig_mode: str
    tau: float
    details: bool
    top_n: int


def _check_sampling(temperature: float, top_k: int | None, top_p: float | None, repetition_penalty: float,
                    sig_mode: str, tau: float, max_new_tokens: int, top_n: int) -> None:
    if not math.isfinite(temperature):
        raise ValueError(f"temperature must be finite (<= 0 means greedy), got {temperature}")
    if max_new_tokens < 0 or isinstance(max_new_tokens, bool) or int(max_new_tokens) != max_new_tokens:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if not (math.isfinite(repetition_penalty) and repetition_penalty > 0):
        raise ValueError(f"repetition_penalty must be finite and > 0, got {repetition_penalty}")
    if sig_mode not in SIG_MODES:
        raise ValueError(f"sig_mode must be one of {SIG_MODES}, got {sig_mode!r}")
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must be in [0, 1], got {tau}")
    if top_n < 0:
        raise ValueError(f"top_n must be >= 0, got {top_n}")


@torch.no_grad()
def generate(
    model,
    prompts: Sequence[Sequence[int]] | torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    greedy: bool = False,
    stop_tokens: Iterable[int] = (),
    stop_fn: Callable[[int, list[int]], bool] | None = None,
    seed: int | None = None,
    use_cache: bool = True,
    slide: int | None = None,
    bayes_mode: str = "mean",
    mc_samples: int | None = None,
    sig_mode: str = "normalize",
    tau: float = 0.5,
    return_details: bool = False,
    top_n: int = 0,
) -> list[list[int]] | list[Generation]:
    """Continue each prompt by up to ``max_new_tokens`` tokens (see the module docstring).

    model: a GPT, or a ``Predictor`` (any predictive: MC dropout, ensembles, temperature); with
    a GPT, ``bayes_mode`` / ``mc_samples`` (default: the model's config) choose its predictive.
    prompts: token-id lists (any lengths, each non-empty) or a (B, T) LongTensor. Rows are
    grouped by prompt length and each group decoded as one batch, so a row's tokens do not
    depend on the other rows under greedy decoding (nor its logits, up to float rounding).
    greedy, or temperature <= 0: argmax decoding. top_k / top_p: filters (None = off).
    repetition_penalty: CTRL penalty on tokens present in the prompt or generated so far.
    stop_tokens: ids that end a row (not included in its output). stop_fn(row, tokens): called
    after each new token of a row; True ends it (for stop strings, which need the tokenizer).
    seed: makes sampling and every draw reproducible; the random stream is shared by the rows,
    so a sampled row depends on the batch it was drawn in.
    sig_mode ('normalize' | 'set') and tau: sigmoid heads only.
    Returns the new tokens per row, or ``Generation`` records when ``return_details`` (with
    the top alternatives, sets and per-draw probabilities when ``top_n`` > 0).
    """
    gens = [None] * len(prompts)
    for group, decoder in _decoders(model, prompts, max_new_tokens, temperature=temperature, top_k=top_k,
                                    top_p=top_p, repetition_penalty=repetition_penalty, greedy=greedy,
                                    stop_tokens=stop_tokens, stop_fn=stop_fn, seed=seed, use_cache=use_cache,
                                    slide=slide, bayes_mode=bayes_mode, mc_samples=mc_samples, sig_mode=sig_mode,
                                    tau=tau, details=return_details or top_n > 0, top_n=top_n):
        for _ in decoder.steps():
            pass
        for i, g in zip(group, decoder.gens):
            gens[i] = g
    return gens if return_details else [g.tokens for g in gens]


def stream(model, prompt: Sequence[int], max_new_tokens: int, **options) -> Iterator[tuple[int, Generation]]:
    """Decode one prompt lazily: yield (index, generation) as each new token is appended to
    ``generation`` (its ``tokens[-1]``); options as ``generate`` (``return_details`` -> details)."""
    options["details"] = options.pop("return_details", True) or options.get("top_n", 0) > 0
    for _, decoder in _decoders(model, [prompt], max_new_tokens, **options):
        for _ in decoder.steps():
            yield len(decoder.gens[0].tokens) - 1, decoder.gens[0]


def _decoders(model, prompts, max_new_tokens: int, *, temperature: float = 1.0, top_k: int | None = None,
              top_p: float | None = None, repetition_penalty: float = 1.0, greedy: bool = False,
              stop_tokens: Iterable[int] = (), stop_fn=None, seed: int | None = None, use_cache: bool = True,
              slide: int | None = None, bayes_mode: str = "mean", mc_samples: int | None = None,
              sig_mode: str = "normalize", tau: float = 0.5, details: bool = False,
              top_n: int = 0) -> Iterator[tuple[list[int], _GroupDecoder]]:
    """(row indices, decoder) per group of prompts of equal length (see ``generate``)."""
    rows = [list(map(int, r)) for r in (prompts.tolist() if isinstance(prompts, torch.Tensor) else prompts)]
    base = model if isinstance(model, Predictor) else None
    if base is not None and (bayes_mode != "mean" or mc_samples is not None):
        raise ValueError("bayes_mode and mc_samples choose the predictive of a bare model; a Predictor has its own")
    core = base.model if base is not None else model
    V, block_size = core.config.vocab_size, core.config.block_size
    for i, r in enumerate(rows):
        if not r:
            raise ValueError(f"prompt {i} is empty: start it with an end-of-text (or any) token")
        if min(r) < 0 or max(r) >= V:
            raise ValueError(f"prompt {i} has token ids outside [0, {V})")
    _check_sampling(temperature, top_k, top_p, repetition_penalty, sig_mode, tau, max_new_tokens, top_n)
    opts = _Options(
        greedy=greedy or temperature <= 0, temperature=temperature, top_k=top_k, top_p=top_p,
        repetition_penalty=repetition_penalty, stop_tokens=frozenset(int(t) for t in stop_tokens), stop_fn=stop_fn,
        use_cache=use_cache, slide=slide, sig_mode=sig_mode, tau=tau, details=details, top_n=top_n,
    )
    device = next(core.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    groups: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(min(len(r), block_size), []).append(i)
    for length, idx in groups.items():
        tokens = torch.tensor([rows[i][-length:] for i in idx], dtype=torch.long, device=device)
        present = None
        if repetition_penalty != 1.0:  # over the whole prompt, not just the part that fits
            present = torch.zeros(len(idx), V, dtype=torch.bool, device=device)
            for j, i in enumerate(idx):
                present[j, rows[i]] = True
        predictor = base or predictor_for(model, bayes_mode, mc_samples, len(idx), seed)
        if generator is not None:
            predictor.generator = generator
        yield idx, _GroupDecoder(predictor, tokens, idx, present, max_new_tokens, opts, generator)


class _GroupDecoder:
    """Decodes B rows whose prompts have the same length, as one batch; ``steps()`` yields after
    each token appended (only the rows still active receive one)."""

    def __init__(self, predictor: Predictor, tokens, row_ids, present, max_new_tokens: int, opts: _Options,
                 generator) -> None:
        self.predictor, self.tokens, self.row_ids, self.present = predictor, tokens, row_ids, present
        self.max_new_tokens, self.opts, self.generator = max_new_tokens, opts, generator
        many = predictor.n_draws > 1
        full = opts.top_n > 0
        self.want_sets = predictor.sigmoid and (opts.sig_mode == "set" or full)
        self.gens = [Generation(mi=[] if many and opts.details else None, top=[] if full else None,
                                sets=[] if full and predictor.sigmoid else None, draws=[] if full and many else None)
                     for _ in range(tokens.shape[0])]

    def _next_tokens(self, draws: Draws) -> torch.Tensor:
        opts = self.opts
        scores = draws.scores
        if self.present is not None:
            scores = apply_repetition_penalty(scores, self.present, opts.repetition_penalty)
        if self.predictor.sigmoid and opts.sig_mode == "set":
            s = draws.set_probs
            allowed = s > opts.tau
            fallback = F.one_hot(s.argmax(-1), s.shape[-1]).bool()
            allowed = torch.where(allowed.any(-1, keepdim=True), allowed, fallback)
            scores = scores.masked_fill(~allowed, float("-inf"))
        if opts.greedy:
            return scores.argmax(-1)
        probs = sampling_probs(scores, opts.temperature, opts.top_k, opts.top_p)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(1)

    def _details(self, draws: Draws, nxt: torch.Tensor) -> list[dict]:
        """Per row: the predictive's account of the chosen token (module docstring)."""
        opts = self.opts
        cols = {"logprob": draws.logprob(nxt), "entropy": draws.entropy()}
        if self.gens[0].mi is not None:
            cols["mi"] = draws.mutual_information()
        if opts.top_n:
            k = min(opts.top_n, draws.log_p.shape[-1])
            p_top, i_top = draws.probs.topk(k, dim=-1)
            cols["top"] = [list(zip(i, p)) for i, p in zip(i_top.tolist(), p_top.tolist())]
            if self.gens[0].sets is not None:
                cols["sets"] = [torch.nonzero(row > opts.tau).squeeze(1).tolist() for row in draws.set_probs]
            if self.gens[0].draws is not None:
                per_draw = draws.log_ps.gather(-1, nxt[None, :, None].expand(draws.samples, -1, 1)).squeeze(-1)
                cols["draws"] = per_draw.exp().t()
        return [{k: (v[j] if isinstance(v, list) else v[j].tolist()) for k, v in cols.items()}
                for j in range(len(nxt))]

    def _record(self, g: Generation, token: int, d: dict | None) -> None:
        g.tokens.append(token)
        if d is None:
            return
        g.logprob.append(d["logprob"])
        g.prob.append(math.exp(d["logprob"]))
        g.entropy.append(d["entropy"])
        for key in ("mi", "top", "sets", "draws"):
            if key in d:
                getattr(g, key).append(d[key])

    def steps(self) -> Iterator[None]:
        if self.max_new_tokens == 0:
            return
        opts = self.opts
        window = ContextWindow(self.predictor, self.tokens, use_cache=opts.use_cache, slide=opts.slide,
                               capacity=self.max_new_tokens)
        active = list(range(self.tokens.shape[0]))
        for step in range(self.max_new_tokens):
            draws = self.predictor.draws(window.hidden, set_probs=self.want_sets)
            nxt = self._next_tokens(draws)
            if self.present is not None:
                self.present[torch.arange(len(nxt), device=nxt.device), nxt] = True
            details = self._details(draws, nxt) if opts.details else None
            chosen = nxt.tolist()
            still = []
            for j in active:
                g = self.gens[j]
                if chosen[j] in opts.stop_tokens:
                    g.finish_reason = "stop_token"
                    continue
                self._record(g, chosen[j], details[j] if details else None)
                yield
                if opts.stop_fn is not None and opts.stop_fn(self.row_ids[j], g.tokens):
                    g.finish_reason = "stop_fn"
                    continue
                still.append(j)
            active = still
            if not active or step == self.max_new_tokens - 1:
                break
            window.append(nxt)  # finished rows keep decoding in lockstep; their tokens are ignored
