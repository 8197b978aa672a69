"""The Python API: load a run folder, then generate text or score it.

    >>> import gptvariants
    >>> lm = gptvariants.load("runs/baseline")
    >>> lm.generate("The king", max_new_tokens=50, temperature=0.8, top_k=40, seed=0)
    >>> lm.score("The king is dead.")[0]   # TokenRecord(id=..., text=..., logprob=..., entropy=..., mi=None)

Prompts are text. An empty prompt starts from the tokenizer's end-of-text token, or from token
0 when the tokenizer has none (the char tokenizer): the model needs one token to condition on.
A prompt longer than block_size keeps its last block_size tokens, with a warning.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_run
from .generate import HeadLogits, _keep, entropy, generate, mutual_information, predictive, window_start
from .tokenizers import load_tokenizer


@dataclass
class TokenRecord:
    """One token with the model's log-probability of it, the predictive entropy (nats) and,
    for Bayesian heads in MC mode, the mutual information (nats; None otherwise)."""

    id: int
    text: str
    logprob: float
    entropy: float
    mi: float | None = None

    @property
    def prob(self) -> float:
        return math.exp(self.logprob)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: id, text, prob, logprob, entropy, and mi when available."""
        d = asdict(self)
        d["prob"] = self.prob
        if d["mi"] is None:
            del d["mi"]
        return d


@dataclass
class Completion:
    """A prompt, its continuation text (stop string removed) and the continuation's tokens."""

    prompt: str
    text: str
    tokens: list[TokenRecord]
    finish_reason: str  # 'length' | 'stop_token' (end-of-text or another stop token) | 'stop_string'


def _device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load(run_dir: str | Path, device: str | torch.device = "cpu") -> LanguageModel:
    """A run folder's current checkpoint and tokenizer as a ``LanguageModel`` (CheckpointError
    when the checkpoint is missing or half-written). ``device='auto'`` picks CUDA when present."""
    model, cfg = load_run(Path(run_dir), _device(device))
    return LanguageModel(model, cfg, load_tokenizer(Path(run_dir)))


class LanguageModel:
    """A trained GPT with its tokenizer: ``generate`` text, ``score`` text token by token.

    ``model`` (the GPT, eval mode), ``config`` (the run's Config) and ``tokenizer`` are public.
    """

    def __init__(self, model, config, tokenizer) -> None:
        self.model, self.config, self.tokenizer = model.eval(), config, tokenizer
        self.start_token = tokenizer.eot_token if tokenizer.eot_token is not None else 0

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode_prompt(self, prompt: str, unknown: str = "error") -> list[int]:
        """Token ids to condition on: the start token for an empty prompt; the last block_size
        tokens (with a warning) for a long one. ``unknown``: 'error' (ValueError) or 'skip'."""
        ids = self.tokenizer.encode(prompt, unknown=unknown) or [self.start_token]
        block = self.model.config.block_size
        if len(ids) > block:
            warnings.warn(f"prompt of {len(ids)} tokens is longer than block_size {block}: keeping its last {block} tokens", stacklevel=3)
            ids = ids[-block:]
        return ids

    def generate(self, prompt: str | Sequence[str], max_new_tokens: int = 200, **kwargs: Any) -> str | list[str]:
        """The continuation text of ``prompt`` (a str, or a list of str -> a list).

        Keyword arguments: ``stop`` (strings that end a sample, cut from the text),
        ``stop_at_eot`` (default True: the end-of-text token ends a sample), ``unknown``
        ('error' | 'skip'), and the sampling options of ``generate.generate``: temperature,
        top_k, top_p, repetition_penalty, greedy, seed, use_cache, bayes_mode, mc_samples,
        sig_mode, tau, stop_tokens.
        """
        out = self.generate_details(prompt, max_new_tokens, **kwargs)
        return out.text if isinstance(out, Completion) else [c.text for c in out]

    def generate_details(
        self,
        prompt: str | Sequence[str],
        max_new_tokens: int = 200,
        *,
        stop: Sequence[str] = (),
        stop_at_eot: bool = True,
        unknown: str = "error",
        stop_tokens: Sequence[int] = (),
        **sampling: Any,
    ) -> Completion | list[Completion]:
        """Like ``generate`` but returns ``Completion`` records with per-token details."""
        single = isinstance(prompt, str)
        prompts = [prompt] if single else list(prompt)
        ids = [self.encode_prompt(p, unknown) for p in prompts]
        stops = list(stop_tokens)
        if stop_at_eot and self.tokenizer.eot_token is not None:
            stops.append(self.tokenizer.eot_token)
        stop = [s for s in stop if s]
        decode = self.tokenizer.decode

        def hit_stop_string(row: int, new: list[int]) -> bool:
            # decoding with the prompt joins the text as the tokenizer would (word spacing)
            return any(s in decode(ids[row] + new)[len(decode(ids[row])) :] for s in stop)

        gens = generate(
            self.model, ids, max_new_tokens, stop_tokens=stops, stop_fn=hit_stop_string if stop else None,
            return_details=True, **sampling,
        )
        out = [self._completion(p, i, g, stop) for p, i, g in zip(prompts, ids, gens)]
        return out[0] if single else out

    def _token_texts(self, context: list[int], new: list[int]) -> list[str]:
        """Each new token's share of the decoded text, so that the pieces join to the text exactly
        (a word tokenizer's spaces included, which decoding tokens one by one would lose)."""
        ends = [len(self.tokenizer.decode(context + new[:k])) for k in range(len(new) + 1)]
        full = self.tokenizer.decode(context + new)
        return [full[a:b] for a, b in zip(ends, ends[1:])]

    def _completion(self, prompt: str, ids: list[int], g, stop: Sequence[str]) -> Completion:
        pieces = self._token_texts(ids, g.tokens)
        text = "".join(pieces)
        n, reason = len(g.tokens), g.finish_reason
        cuts = [text.find(s) for s in stop if s in text]
        if cuts:  # cut the text at the earliest stop string; keep the tokens that end before it
            cut = min(cuts)
            text, reason = text[:cut], "stop_string"
            while n and sum(map(len, pieces[:n])) > cut:
                n -= 1
        records = [
            TokenRecord(t, pieces[k], lp, h, None if g.mi is None else g.mi[k])
            for k, (t, lp, h) in enumerate(zip(g.tokens[:n], g.logprob, g.entropy))
        ]
        return Completion(prompt=prompt, text=text, tokens=records, finish_reason=reason)

    @torch.no_grad()
    def score(
        self,
        text: str,
        *,
        bayes_mode: str | None = None,
        mc_samples: int | None = None,
        seed: int | None = None,
        unknown: str = "error",
        slide: int | None = None,
    ) -> list[TokenRecord]:
        """Per-token log p(token | context) and predictive entropy of ``text``.

        The end-of-text token is prepended when the tokenizer has one, so every token is scored;
        otherwise the first token has no context and is not scored. Past block_size the
        contexts follow generation's sliding-window policy (``generate.window_start``), so a
        token's score equals its probability at generation time. Bayesian heads: ``bayes_mode``
        'step' (default) scores under the average of ``mc_samples`` posterior draws and adds the
        mutual information; 'mean' uses the posterior mean weights.
        """
        model = self.model
        ids = self.tokenizer.encode(text, unknown=unknown)
        if self.tokenizer.eot_token is not None:
            ids = [self.tokenizer.eot_token] + ids
        if len(ids) < 2:
            return []
        mode = bayes_mode or ("step" if model.bayesian else "mean")
        generator = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        head = HeadLogits(model, mode, mc_samples or model.obj_config.mc_samples, 1, generator)
        block = model.config.block_size
        keep = _keep(block, slide)
        # group the targets t = 1..N-1 by where their context starts: one forward pass per group
        groups: list[list[int]] = []  # [start, first target, last target]
        start = 0
        for t in range(1, len(ids)):
            start = window_start(start, t, block, keep)
            if groups and groups[-1][0] == start:
                groups[-1][2] = t
            else:
                groups.append([start, t, t])
        x = torch.tensor(ids, dtype=torch.long, device=self.device)
        records: list[TokenRecord] = []
        pieces = self._token_texts(ids[:1], ids[1:])
        chunk = max(1, (1 << 23) // (head.samples * model.config.vocab_size))  # ~32 MiB of fp32 logits at a time
        for start, first, last in groups:
            h = model.transformer(x[None, start:last])[0, first - 1 - start :]  # predicts tokens first..last
            for c in range(0, h.shape[0], chunk):
                hc = h[c : c + chunk]
                target = x[first + c : first + c + hc.shape[0]]
                log_p, log_ps = predictive(model.objective, head(hc))
                lp = log_p.gather(-1, target[:, None]).squeeze(-1).tolist()
                ent = entropy(log_p).tolist()
                mi = mutual_information(log_p, log_ps).tolist() if mode == "step" else [None] * len(lp)
                for t, a, b, m in zip(target.tolist(), lp, ent, mi):
                    records.append(TokenRecord(t, pieces[len(records)], a, b, m))
        return records

    def __repr__(self) -> str:
        c = self.config
        return (f"LanguageModel(variant={c.objective.variant!r}, n_layer={c.model.n_layer}, n_embd={c.model.n_embd}, "
                f"block_size={c.model.block_size}, tokenizer={self.tokenizer.name!r}, device={self.device})")


__all__ = ["Completion", "LanguageModel", "TokenRecord", "load"]
