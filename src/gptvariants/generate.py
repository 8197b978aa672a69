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
    1. z: logits of the head, (S, B, V) for S weight draws (S = 1 unless Bayesian ``step``).
    2. the predictive distribution p: softmax(z), or for sigmoid heads sigmoid(z) / sum_v
       sigmoid(z) normalised per row (the study normalised over the whole batch); Bayesian
       ``step`` mode averages p over the S draws.
    3. scores, with softmax(scores) = p: the raw logits for a softmax head with one weight set,
       log p otherwise (sigmoid heads, MC averages). The CTRL repetition penalty acts on them.
    4. sigmoid ``set`` mode keeps only the tokens with sigmoid(z) > tau (draw-averaged), the
       scores of the others become -inf; if no token clears tau, the argmax of sigmoid(z).
    5. greedy (``greedy=True`` or temperature <= 0): argmax of the scores; otherwise scores /
       temperature, then top-k, then top-p (nucleus), then one draw from the result.
    Reported details (probability of the chosen token, entropy, mutual information) describe
    the model's predictive p of step 2, not the filtered distribution that was sampled.

Bayesian heads (``bayes_mode``)
    ``mean``: the posterior mean weights. ``sequence``: one weight draw per row, kept for its
    whole generation. ``step``: S = mc_samples draws at every step, p = mean_s p_s, computed
    from one backbone pass. For a fixed hidden state h, z_v = sum_c W_vc h_c is exactly Gaussian
    with mean mu_v.h + b_v and variance sum_c sigma_vc^2 h_c^2 + sigma_b,v^2, independent over
    v because the rows of W are independent; drawing z directly (local reparameterisation) is
    therefore the same distribution as drawing S weight matrices, at the cost of one extra
    (B, C) x (C, V) matmul and S*B*V normal numbers instead of S*V*C. Its mutual information
    H(mean_s p_s) - mean_s H(p_s) separates model (epistemic) uncertainty from the entropy.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

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


def _keep(block_size: int, slide: int | None) -> int:
    slide = default_slide(block_size) if slide is None else slide
    if not 1 <= slide <= block_size:
        raise ValueError(f"slide must be in [1, block_size={block_size}], got {slide}")
    return max(1, block_size - slide)


class ContextWindow:
    """B sequences of equal length as the backbone sees them, one appended token at a time.

    ``hidden`` is the final hidden state (B, C) of the last token, from which the next token is
    predicted. With ``use_cache`` the keys/values live in a KVCache and a step costs one token's
    forward pass; without it, the whole current window is recomputed each step.
    """

    def __init__(self, model, tokens: torch.Tensor, *, use_cache: bool = True, slide: int | None = None, capacity: int = 0) -> None:
        B, n = tokens.shape
        self.model = model
        self.block_size = model.config.block_size
        self.keep = _keep(self.block_size, slide)
        self.buf = tokens.new_empty(B, n + capacity)  # the full history, so a slide can re-prefill
        self.buf[:, :n] = tokens
        self.n = n
        self.start = max(0, n - self.block_size)
        self.cache = model.new_cache(B, self.block_size) if use_cache else None
        self.hidden = self._encode()

    @property
    def context(self) -> torch.Tensor:
        return self.buf[:, self.start : self.n]

    def _encode(self) -> torch.Tensor:
        if self.cache is not None:
            self.cache.reset()
        return self.model.transformer(self.context, self.cache)[:, -1]

    def append(self, tokens: torch.Tensor) -> None:
        """Add one token per row (B,) and update ``hidden``."""
        if self.n == self.buf.shape[1]:  # out of preallocated room: grow (only when capacity was short)
            self.buf = torch.cat([self.buf, self.buf.new_empty(self.buf.shape[0], max(self.n, 16))], dim=1)
        self.buf[:, self.n] = tokens
        self.n += 1
        start = window_start(self.start, self.n, self.block_size, self.keep)
        if start != self.start or self.cache is None:
            self.start = start
            self.hidden = self._encode()
        else:
            self.hidden = self.model.transformer(tokens[:, None], self.cache)[:, -1]


# ---------------------------------------------------------------------------------------------
# logits of the head, per Bayesian mode


class HeadLogits:
    """Final hidden states (B, C) -> fp32 logits (S, B, V) under one ``bayes_mode``.

    ``rows`` is the batch size: ``sequence`` mode draws one (V, C) weight matrix per row up front
    and holds all of them (rows * V * C floats). Randomness comes from ``generator``, so a seed
    fixes every draw.
    """

    def __init__(self, model, mode: str = "mean", mc_samples: int = 1, rows: int = 1, generator: torch.Generator | None = None) -> None:
        if mode not in BAYES_MODES:
            raise ValueError(f"bayes_mode must be one of {BAYES_MODES}, got {mode!r}")
        if mode != "mean" and not model.bayesian:
            raise ValueError(f"bayes_mode={mode!r} needs a Bayesian head; this model's head is deterministic (use 'mean')")
        if mc_samples < 1:
            raise ValueError(f"mc_samples must be >= 1, got {mc_samples}")
        self.model, self.mode, self.generator = model, mode, generator
        self.samples = mc_samples if mode == "step" else 1
        if mode == "mean":
            return
        head = model.head
        mu = head.weight_mu.detach().float()
        sigma = F.softplus(head.weight_rho.detach().float())
        has_bias = head.bias_mu is not None
        b_mu = head.bias_mu.detach().float() if has_bias else None
        b_sigma = F.softplus(head.bias_rho.detach().float()) if has_bias else None
        if mode == "step":  # moments of z given h (module docstring), computed once per call
            self.mu, self.b_mu = mu, b_mu
            self.var, self.b_var = sigma.square(), (b_sigma.square() if has_bias else None)
        else:  # sequence: W_r = mu + sigma * eps_r, one (V, C) matrix per row
            eps = torch.randn((rows, *mu.shape), generator=generator, device=mu.device)
            self.w = mu + sigma * eps
            self.b = b_mu + b_sigma * torch.randn((rows, *b_mu.shape), generator=generator, device=mu.device) if has_bias else None

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        if self.mode == "mean":
            return self.model.logits(h)[None]
        h = h.float()
        if self.mode == "sequence":
            z = torch.einsum("bvc,bc->bv", self.w, h)
            return (z if self.b is None else z + self.b)[None]
        mean = F.linear(h, self.mu, self.b_mu)
        std = F.linear(h.square(), self.var, self.b_var).sqrt()
        eps = torch.randn((self.samples, *mean.shape), generator=self.generator, device=mean.device)
        return mean + std * eps


def predictive(objective, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p (B, V), per-draw log p_s (S, B, V)) for logits z (S, B, V).

    p_s is softmax(z_s), or sigmoid(z_s) / sum_v sigmoid(z_s) normalised per row for sigmoid
    heads; p = mean_s p_s.
    """
    log_ps = objective.log_probs(z)
    S = z.shape[0]
    return (log_ps[0] if S == 1 else torch.logsumexp(log_ps, dim=0) - math.log(S)), log_ps


def entropy(log_p: torch.Tensor) -> torch.Tensor:
    """H(p) = -sum_v p_v log p_v over the last dimension (nats)."""
    return -(log_p.exp() * log_p).sum(-1)


def mutual_information(log_p: torch.Tensor, log_ps: torch.Tensor) -> torch.Tensor:
    """H(mean_s p_s) - mean_s H(p_s) >= 0 (clamped: it is >= 0 up to rounding)."""
    return (entropy(log_p) - entropy(log_ps).mean(0)).clamp_min(0.0)


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
    token, the model's probability of it (and its log), the predictive entropy (nats) and, in
    Bayesian ``step`` mode, the mutual information (nats). ``finish_reason``: 'length',
    'stop_token' or 'stop_fn'. The per-token lists are empty unless details were asked for."""

    tokens: list[int]
    prob: list[float]
    logprob: list[float]
    entropy: list[float]
    mi: list[float] | None
    finish_reason: str


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
    bayes_mode: str
    mc_samples: int
    sig_mode: str
    tau: float
    details: bool


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
) -> list[list[int]] | list[Generation]:
    """Continue each prompt by up to ``max_new_tokens`` tokens (see the module docstring).

    prompts: token-id lists (any lengths, each non-empty) or a (B, T) LongTensor. Rows are
    grouped by prompt length and each group decoded as one batch, so a row's tokens do not
    depend on the other rows under greedy decoding (nor its logits, up to float rounding).
    greedy, or temperature <= 0: argmax decoding. top_k / top_p: filters (None = off).
    repetition_penalty: CTRL penalty on tokens present in the prompt or generated so far.
    stop_tokens: ids that end a row (not included in its output). stop_fn(row, tokens): called
    after each new token of a row; True ends it (for stop strings, which need the tokenizer).
    seed: makes sampling and Bayesian draws reproducible (a torch.Generator); the random
    stream is shared by the rows, so a sampled row depends on the batch it was drawn in.
    bayes_mode / mc_samples (default: the model's config): Bayesian heads only.
    sig_mode ('normalize' | 'set') and tau: sigmoid heads only.
    Returns the new tokens per row, or ``Generation`` records when ``return_details``.
    """
    rows = [list(map(int, r)) for r in (prompts.tolist() if isinstance(prompts, torch.Tensor) else prompts)]
    V, block_size = model.config.vocab_size, model.config.block_size
    for i, r in enumerate(rows):
        if not r:
            raise ValueError(f"prompt {i} is empty: start it with an end-of-text (or any) token")
        if min(r) < 0 or max(r) >= V:
            raise ValueError(f"prompt {i} has token ids outside [0, {V})")
    if max_new_tokens < 0:
        raise ValueError("max_new_tokens must be >= 0")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty}")
    if sig_mode not in SIG_MODES:
        raise ValueError(f"sig_mode must be one of {SIG_MODES}, got {sig_mode!r}")
    opts = _Options(
        greedy=greedy or temperature <= 0, temperature=temperature, top_k=top_k, top_p=top_p,
        repetition_penalty=repetition_penalty, stop_tokens=frozenset(int(t) for t in stop_tokens), stop_fn=stop_fn,
        use_cache=use_cache, slide=slide, bayes_mode=bayes_mode, mc_samples=mc_samples or model.obj_config.mc_samples,
        sig_mode=sig_mode, tau=tau, details=return_details,
    )
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    out: list[Generation | None] = [None] * len(rows)
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
        for i, g in zip(idx, _generate_group(model, tokens, idx, present, max_new_tokens, opts, generator)):
            out[i] = g
    return out if return_details else [g.tokens for g in out]


def _generate_group(model, tokens, row_ids, present, max_new_tokens, opts: _Options, generator) -> list[Generation]:
    """Decode B rows whose prompts have the same length, as one batch."""
    B = tokens.shape[0]
    sigmoid = model.objective.sigmoid
    gens = [Generation([], [], [], [], [] if opts.bayes_mode == "step" else None, "length") for _ in range(B)]
    if max_new_tokens == 0:
        return gens
    head = HeadLogits(model, opts.bayes_mode, opts.mc_samples, B, generator)
    window = ContextWindow(model, tokens, use_cache=opts.use_cache, slide=opts.slide, capacity=max_new_tokens)
    active = list(range(B))
    for step in range(max_new_tokens):
        z = head(window.hidden)  # (S, B, V)
        log_p, log_ps = predictive(model.objective, z)
        scores = z[0] if z.shape[0] == 1 and not sigmoid else log_p
        if present is not None:
            scores = apply_repetition_penalty(scores, present, opts.repetition_penalty)
        if sigmoid and opts.sig_mode == "set":
            s = torch.sigmoid(z).mean(0)
            allowed = s > opts.tau
            fallback = F.one_hot(s.argmax(-1), s.shape[-1]).bool()
            allowed = torch.where(allowed.any(-1, keepdim=True), allowed, fallback)
            scores = scores.masked_fill(~allowed, float("-inf"))
        if opts.greedy:
            nxt = scores.argmax(-1)
        else:
            probs = sampling_probs(scores, opts.temperature, opts.top_k, opts.top_p)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        if present is not None:
            present[torch.arange(B, device=nxt.device), nxt] = True
        if opts.details:
            logprob = log_p.gather(-1, nxt[:, None]).squeeze(-1).tolist()
            ent = entropy(log_p).tolist()
            mi = mutual_information(log_p, log_ps).tolist() if opts.bayes_mode == "step" else None
        chosen = nxt.tolist()
        still = []
        for j in active:
            g = gens[j]
            if chosen[j] in opts.stop_tokens:
                g.finish_reason = "stop_token"
                continue
            g.tokens.append(chosen[j])
            if opts.details:
                g.logprob.append(logprob[j])
                g.prob.append(math.exp(logprob[j]))
                g.entropy.append(ent[j])
                if mi is not None:
                    g.mi.append(mi[j])
            if opts.stop_fn is not None and opts.stop_fn(row_ids[j], g.tokens):
                g.finish_reason = "stop_fn"
                continue
            still.append(j)
        active = still
        if not active or step == max_new_tokens - 1:
            break
        window.append(nxt)  # finished rows keep decoding in lockstep; their tokens are ignored
    return gens


# ---------------------------------------------------------------------------------------------
# gptv sample

# ANSI colours for --show-uncertainty, by entropy as a fraction of its maximum log V
_COLOURS = ((0.15, "\033[32m"), (0.40, "\033[33m"), (float("inf"), "\033[31m"))  # green, yellow, red
_RESET = "\033[0m"


def colour_by_entropy(records: Sequence[dict], vocab_size: int) -> str:
    """The tokens' text, each wrapped in an ANSI colour by entropy / log V:
    green below 0.15, yellow below 0.40, red above."""
    h_max = math.log(vocab_size)
    parts = []
    for r in records:
        colour = next(c for limit, c in _COLOURS if r["entropy"] / h_max < limit)
        parts.append(f"{colour}{r['text']}{_RESET}")
    return "".join(parts)


def _unescape(s: str) -> str:
    """--stop '\\n' means a line break: a shell cannot easily pass one."""
    return s.replace("\\n", "\n").replace("\\t", "\t")


def cmd_sample(args: argparse.Namespace) -> int:
    """``gptv sample``: print samples (text, or JSON lines with per-token details)."""
    from .api import load

    if args.prompt_file is not None:
        with open(args.prompt_file, encoding="utf-8") as f:
            prompts = [line.rstrip("\r\n") for line in f]
        if not prompts:
            raise ValueError(f"{args.prompt_file} holds no prompts")
    else:
        prompts = [args.prompt]
    lm = load(args.ckpt, device=args.device)
    sampling = dict(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
        greedy=args.greedy, seed=args.seed, use_cache=not args.no_cache, bayes_mode=args.bayes_mode,
        mc_samples=args.mc_samples, sig_mode=args.sig_mode, tau=args.tau,
    )
    batch = [p for p in prompts for _ in range(args.num_samples)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = lm.generate_details(
            batch, args.max_new_tokens, stop=[_unescape(s) for s in args.stop], stop_at_eot=not args.ignore_eot,
            unknown=args.unknown, **sampling,
        )
    for msg in dict.fromkeys(str(w.message) for w in caught):  # once per distinct prompt
        print(f"gptv sample: warning: {msg}", file=sys.stderr)
    colour = args.show_uncertainty and sys.stdout.isatty()
    for k, res in enumerate(results):
        records = [t.to_dict() for t in res.tokens]
        if args.json:
            line = {"prompt_index": k // args.num_samples, "sample": k % args.num_samples, "prompt": res.prompt,
                    "completion": res.text, "finish_reason": res.finish_reason, "tokens": records}
            print(json.dumps(line, ensure_ascii=False))
            continue
        if k:
            print("---------------")
        body = colour_by_entropy(records, lm.config.model.vocab_size) if colour else res.text
        print(res.prompt + body)
    if colour:
        print("entropy / log V: \033[32m< 0.15\033[0m \033[33m< 0.40\033[0m \033[31m>= 0.40\033[0m", file=sys.stderr)
    return 0


def add_sample_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", default="", help="prompt text (default: empty = start from the end-of-text token, or token 0 without one)")
    src.add_argument("--prompt-file", default=None, help="a file with one prompt per line")
    p.add_argument("--ckpt", required=True, help="run folder (made by gptv train)")
    p.add_argument("--num-samples", type=int, default=1, help="samples per prompt")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=1.0, help="<= 0 means greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass in (0, 1]")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="CTRL penalty (> 1 discourages repeats)")
    p.add_argument("--greedy", action="store_true", help="argmax decoding")
    p.add_argument("--stop", nargs="+", default=[], metavar="STR", help="stop strings (\\n and \\t understood); cut from the output")
    p.add_argument("--ignore-eot", action="store_true", help="keep generating past the end-of-text token")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--bayes-mode", choices=BAYES_MODES, default="mean", help="Bayesian heads: posterior mean, MC average per step, or one draw per sequence")
    p.add_argument("--mc-samples", type=int, default=None, help="draws per step in --bayes-mode step (default: the run's mc_samples)")
    p.add_argument("--sig-mode", choices=SIG_MODES, default="normalize", help="sigmoid heads: sample sigmoid/sum, or among tokens with sigmoid > tau")
    p.add_argument("--tau", type=float, default=0.5, help="threshold of --sig-mode set")
    p.add_argument("--json", action="store_true", help="one JSON line per sample with per-token id, text, prob, entropy (and mi)")
    p.add_argument("--show-uncertainty", action="store_true", help="colour tokens by entropy in a terminal")
    p.add_argument("--unknown", choices=["error", "skip"], default="error", help="prompt text the tokenizer cannot encode")
    p.add_argument("--no-cache", action="store_true", help="recompute the context every step (slow; for checking)")
    p.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | mps | auto")


def register_cli(subparsers) -> None:
    """Add ``gptv sample`` to the ``gptv`` subcommands."""
    p = subparsers.add_parser("sample", help="generate text from a trained run")
    add_sample_arguments(p)
    p.set_defaults(func=cmd_sample)
