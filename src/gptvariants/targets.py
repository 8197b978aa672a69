"""Teacher-built multi-label target sets for the sigmoid variants (Sig-GPT).

A sigmoid variant trains with BCE against a *set* of positive next tokens per position.
This module builds those sets with a teacher, either once for a whole dataset
(``build_targets`` / ``gptv targets``, read back by ``TokenDataset.open_sets``) or inside
the training loop (``build_online_teacher``, config key ``teacher``).

On disk, ``DATA/targets/NAME/`` holds
    {split}.bin         (n_tokens, k) uint16 (uint32 when V >= 65536); row i = candidates
                        for tokens[i+1], padded with the dtype's max value
    {split}.probs.bin   (n_tokens, k) float16 teacher probabilities of those ids (--store-probs)
    meta.json           written last: its presence marks the sets as complete

Row i holds the true next token tokens[i+1] plus, at a random fraction ``ratio`` of the
positions, the teacher's most probable other tokens (top-k, optionally cut to the nucleus
``top_p``, to probabilities >= ``min_prob`` and by the perplexity filter); at most k ids in
all, so when all k teacher candidates are kept and the true token is not among them, it
replaces the least probable one. The last row of a split has no next token and holds the
teacher set or nothing. This fixes the study's augmenter, which left the true token out and
scattered candidates onto the wrong positions.

The ``sample`` rule instead stores the distinct tokens among k - 1 draws from the teacher's
distribution, plus the true token. A sigmoid head trained on top-k sets learns set
membership, which no readout can turn back into p(v | context) (all confident candidates
look alike); on sampled sets membership is 1 - (1 - p_v)^k, which the head inverts
(``SigmoidBCE(set_draws=k)``; training sets ``set_draws`` from these sets' meta.json).

Teacher specs:
    hf:NAME_OR_PATH   a Hugging Face causal LM (the study used gpt2), same vocabulary as the data
    ckpt:RUN          a gptvariants run folder (its current checkpoint)
    ngram:N           interpolated Kneser-Ney N-gram model fitted on the train split
    oracle            the exact next-token distribution of the synthetic language
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_write, preallocate
from .data import SPLITS, TokenDataset, token_dtype

FORMAT = 1
PROGRESS_FILE = "progress.json"
TOKENS_PER_FORWARD = 16384  # default teacher batch: this many tokens of windows per forward
ORACLE_MIN_PROB = 0.01  # the oracle's default support threshold when min_prob is 0
ALTERNATIVES = "use `ckpt:RUN` (a gptvariants run folder) or `ngram:N` (fitted on this data's train split) instead"


# ============================================================================ teachers


class Teacher:
    """A next-token predictor over the data's vocabulary.

    ``next_token_probs(windows)`` maps int64 windows (B, T) on ``device`` to float32 probs
    (B, T, V) where [b, t] = p(next | windows[b, :t+1]) seeing only the window.
    ``stream_probs(tokens, a, b)`` yields (offset, probs (m, V)) for positions a..b-1 of a
    whole split, with the best context the teacher can use; it is a pure function of
    (tokens, a, b), which is what makes an interrupted build resume byte-identically.
    """

    spec: str = ""
    vocab_size: int = 0
    device: torch.device = torch.device("cpu")

    def next_token_probs(self, windows: torch.Tensor) -> torch.Tensor:
        raise ValueError(f"teacher {self.spec!r} cannot score arbitrary windows (online use and the perplexity filter need it)")

    def token_log_probs(self, windows: torch.Tensor) -> torch.Tensor:
        """(B, T-1) log p(windows[:, t+1] | windows[:, :t+1])."""
        p = self.next_token_probs(windows)[:, :-1]
        return p.gather(2, windows[:, 1:, None]).squeeze(2).clamp_min(1e-30).log()

    def stream_probs(self, tokens: np.ndarray, a: int, b: int) -> Iterator[tuple[int, torch.Tensor]]:
        raise NotImplementedError

    def stream_unique(self, tokens: np.ndarray, a: int, b: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor | None]]:
        """``stream_probs`` as (offset, distinct rows (u, V), row of each position (m,) or None for
        the identity): teachers whose prediction depends on a short context compute it once per
        distinct context, and set selection then works on distinct rows only."""
        for off, p in self.stream_probs(tokens, a, b):
            yield off, p, None

    def info(self) -> dict[str, Any]:
        return {"spec": self.spec, "vocab_size": self.vocab_size}

    def rows_per_chunk(self) -> int:
        """Rows of (rows, V) float32 probabilities held at once: ~32 MiB (256 MiB on GPU)."""
        budget = 2**26 if self.device.type == "cuda" else 2**23
        return max(1, budget // self.vocab_size)


class WindowedTeacher(Teacher):
    """A causal LM with a fixed context: ``hidden`` (B, T) -> (B, T, C), ``probs_from_hidden`` (m, C) -> (m, V).

    Over a stream it runs windows of ``context`` tokens with stride S = context // 2: the
    first window predicts its every position, each later one only its last S positions, so
    every prediction after the first window sees at least context - S >= context / 2 tokens.
    """

    context: int = 0
    batch_size: int = 1

    def hidden(self, windows: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def probs_from_hidden(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def softmax_logits(self, h: torch.Tensor) -> torch.Tensor | None:
        """Logits z (m, V) with probs_from_hidden(h) = softmax(z), or None for another readout."""
        return None

    def top_from_hidden(self, h: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(probs, ids) of the k most probable tokens per row, sorted. A softmax teacher ranks
        by logits and normalises only the k it keeps, skipping the (m, V) exp and division."""
        z = self.softmax_logits(h)
        if z is None:
            return self.probs_from_hidden(h).topk(k, dim=-1)
        top, ids = z.topk(k, dim=-1)
        return (top - torch.logsumexp(z, dim=-1, keepdim=True)).exp_(), ids

    @torch.no_grad()
    def next_token_probs(self, windows: torch.Tensor) -> torch.Tensor:
        if windows.shape[1] > self.context:
            raise ValueError(f"windows of {windows.shape[1]} tokens exceed the teacher's context of {self.context}")
        h = self.hidden(windows)
        return self.probs_from_hidden(h.reshape(-1, h.shape[-1])).view(*windows.shape, -1)

    @torch.no_grad()
    def stream_probs(self, tokens: np.ndarray, a: int, b: int) -> Iterator[tuple[int, torch.Tensor]]:
        n, L = len(tokens), min(self.context, len(tokens))
        S = max(1, L // 2)
        pos = np.arange(a, b)
        start = np.where(pos < L, 0, ((pos - L) // S + 1) * S)
        start = np.minimum(start, n - L)  # windows at the end shift left: more context, same length
        starts, which = np.unique(start, return_inverse=True)
        rows = self.rows_per_chunk()
        hs = []
        for i in range(0, len(starts), self.batch_size):
            idx = starts[i : i + self.batch_size, None] + np.arange(L)
            w = torch.from_numpy(tokens[idx].astype(np.int64)).to(self.device)
            hs.append(self.hidden(w))
        h = torch.cat(hs)  # (n_windows, L, C): hidden states are small next to (L, V) logits
        hr = h[torch.from_numpy(which).to(self.device), torch.from_numpy(pos - start).to(self.device)]
        for s in range(0, len(hr), rows):
            yield s, self.probs_from_hidden(hr[s : s + rows])


class CheckpointTeacher(WindowedTeacher):
    """``ckpt:RUN``: a gptvariants model; its predictive distribution (softmax or normalised sigmoid)."""

    def __init__(self, run: str, data: TokenDataset, device: torch.device, context: int | None, batch_size: int) -> None:
        from .checkpoint import load_run

        run_dir = Path(run)
        info_path = run_dir / "data.json"
        if info_path.is_file():
            info = json.loads(info_path.read_text())
            for key in ("tokenizer", "vocab_size"):
                if info.get(key) != data.meta.get(key):
                    raise ValueError(f"teacher ckpt:{run} was trained on data with {key} {info.get(key)!r}, this data has {data.meta.get(key)!r}")
        self.model, cfg = load_run(run_dir, device)
        if cfg.model.vocab_size < data.vocab_size:
            raise ValueError(f"teacher ckpt:{run} has vocab_size {cfg.model.vocab_size}, the data {data.vocab_size}")
        self.spec, self.device, self.vocab_size = f"ckpt:{run}", device, data.vocab_size
        self.context = min(context or cfg.model.block_size, cfg.model.block_size)
        self.batch_size = batch_size or max(1, TOKENS_PER_FORWARD // self.context)
        self.variant = cfg.objective.variant

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else torch.autocast("cpu", enabled=False)

    def hidden(self, windows: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.model.transformer(windows)

    def probs_from_hidden(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.objective.log_probs(self._logits(h)).exp()

    def softmax_logits(self, h: torch.Tensor) -> torch.Tensor | None:
        return None if self.model.objective.sigmoid else self._logits(h)

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.logits(h)[:, : self.vocab_size]  # a padded vocabulary's extra ids never occur in the data

    def info(self) -> dict[str, Any]:
        return {**super().info(), "context": self.context, "variant": self.variant}


class HFTeacher(WindowedTeacher):
    """``hf:NAME_OR_PATH``: a transformers causal LM; softmax of its output layer on the base model's hidden states."""

    def __init__(self, name: str, data: TokenDataset, device: torch.device, context: int | None, batch_size: int) -> None:
        try:
            from transformers import AutoModelForCausalLM
        except ImportError:
            raise RuntimeError("hf: teachers need transformers: pip install 'gptvariants[hf]' (or use ckpt:RUN or ngram:N)") from None

        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false") or os.environ.get("TRANSFORMERS_OFFLINE", "0") not in ("0", "", "false")
        try:
            try:  # the cache first: no network round-trips when the model is already here
                model = AutoModelForCausalLM.from_pretrained(name, local_files_only=True)
            except OSError:
                if offline or Path(name).exists():
                    raise
                model = AutoModelForCausalLM.from_pretrained(name)
        except OSError as e:
            raise RuntimeError(f"cannot load the Hugging Face model {name!r} (not cached and not downloadable: {str(e).splitlines()[0]}); {ALTERNATIVES}") from e
        V = int(model.config.vocab_size)
        if V != data.vocab_size:
            raise ValueError(f"teacher hf:{name} has a vocabulary of {V} tokens, the data {data.vocab_size} ({data.meta['tokenizer']}); {ALTERNATIVES}")
        self._check_tokenizer(name, data)
        self.model = model.to(device).eval()
        self.spec, self.device, self.vocab_size = f"hf:{name}", device, V
        n_pos = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None) or 1024
        self.context = min(context or n_pos, n_pos)
        self.batch_size = batch_size or max(1, TOKENS_PER_FORWARD // self.context)
        self.head = model.get_output_embeddings()

    @staticmethod
    def _check_tokenizer(name: str, data: TokenDataset) -> None:
        """Both tokenizers must encode a sample of the data's text to the same ids."""
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(name, local_files_only=True)
        except (OSError, ValueError):
            tok = None
        if tok is None or len(tok) <= 1:  # transformers 5 builds an empty tokenizer when the files are missing
            warnings.warn(f"no tokenizer found for hf:{name}; the vocabulary is checked by size only", stacklevel=3)
            return
        sample = np.asarray(data.split("val")[:512], dtype=np.int64)
        text = data.tokenizer.decode(sample.tolist())
        ours, theirs = data.tokenizer.encode(text), tok.encode(text)
        if ours != theirs:
            i = next((j for j, (p, q) in enumerate(zip(ours, theirs)) if p != q), min(len(ours), len(theirs)))
            raise ValueError(f"teacher hf:{name} tokenizes the data differently from {data.meta['tokenizer']!r} (first difference at token {i}); {ALTERNATIVES}")

    def hidden(self, windows: torch.Tensor) -> torch.Tensor:
        return self.model.base_model(input_ids=windows).last_hidden_state

    def probs_from_hidden(self, h: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.head(h).float(), dim=-1)

    def softmax_logits(self, h: torch.Tensor) -> torch.Tensor | None:
        return self.head(h).float()

    def info(self) -> dict[str, Any]:
        return {**super().info(), "context": self.context}


class NgramTeacher(Teacher):
    """``ngram:N``: interpolated Kneser-Ney with one discount D = 0.75, fitted on the train split.

    p_o(w | u) = max(c_o(u, w) - D, 0) / c_o(u) + D n_o(u) / c_o(u) * p_{o-1}(w | u'), down to
    p_0 = 1/V, where u' drops the oldest token of u, c_N are raw counts, c_o for o < N are
    continuation counts (how many distinct tokens precede the o-gram), c_o(u) = sum_w c_o(u, w)
    and n_o(u) the number of distinct w after u. A context never seen falls back to p_{o-1};
    the first positions of a stream use the context they have.
    """

    D = 0.75

    def __init__(self, n: int, data: TokenDataset, device: torch.device) -> None:
        if n < 1:
            raise ValueError(f"ngram order must be >= 1, got {n}")
        V = data.vocab_size
        if n * math.log2(V) >= 63:
            raise ValueError(f"ngram:{n} with a vocabulary of {V} overflows 64-bit n-gram keys; use a smaller N")
        self.n, self.vocab_size, self.device, self.spec = n, V, device, f"ngram:{n}"
        train = np.asarray(data.split("train"), dtype=np.int64)
        t0 = time.perf_counter()
        # key of an o-gram t_1..t_o = sum_j t_j V^(o-j): dropping t_1 is `key % V^(o-1)`
        keys = np.zeros(len(train) - n + 1, dtype=np.int64)
        for j in range(n):
            keys = keys * V + train[j : len(train) - n + 1 + j]
        keys, counts = np.unique(keys, return_counts=True)
        self.orders: list[tuple[np.ndarray, ...]] = [None] * (n + 1)  # type: ignore[list-item]
        for o in range(n, 0, -1):
            if o < n:  # continuation counts: distinct (o+1)-grams ending in each o-gram
                keys, counts = np.unique(keys % V**o, return_counts=True)
            self.orders[o] = self._tables(keys, counts.astype(np.float64), V)
        self.fit_seconds = time.perf_counter() - t0

    @staticmethod
    def _tables(keys: np.ndarray, counts: np.ndarray, V: int) -> tuple[np.ndarray, ...]:
        """(sorted context keys, first pair index, pair count per context, total count, pair keys, next ids, pair counts)."""
        ctx = keys // V
        ctx_keys, first, n_types = np.unique(ctx, return_index=True, return_counts=True)
        total = np.add.reduceat(counts, first)
        return ctx_keys, first, n_types, total, keys, (keys % V).astype(np.int64), counts

    def _contexts(self, hist: np.ndarray, avail: np.ndarray, o: int) -> tuple[np.ndarray, np.ndarray]:
        """(index into order o's contexts, found) for rows whose last o-1 history tokens are hist[:, -(o-1):]."""
        ctx_keys = self.orders[o][0]
        key = np.zeros(len(hist), dtype=np.int64)
        for j in range(o - 1):
            key = key * self.vocab_size + hist[:, hist.shape[1] - (o - 1) + j]
        i = np.minimum(np.searchsorted(ctx_keys, key), len(ctx_keys) - 1)
        return i, (ctx_keys[i] == key) & (avail >= o - 1)

    def dense(self, hist: np.ndarray, avail: np.ndarray) -> np.ndarray:
        """(m, V) float32 probabilities for rows with history hist (m, N-1) of which the last avail[r] are real."""
        m, V, D = len(hist), self.vocab_size, self.D
        p = np.full((m, V), 1.0 / V)
        for o in range(1, self.n + 1):
            _, first, n_types, total, _, nxt, cnt = self.orders[o]
            i, found = self._contexts(hist, avail, o)
            r = np.flatnonzero(found)
            ci = i[r]
            p[r] *= (D * n_types[ci] / total[ci])[:, None]
            lengths = n_types[ci]
            flat = np.repeat(first[ci], lengths) + np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            rr = np.repeat(r, lengths)
            p[rr, nxt[flat]] += (cnt[flat] - D) / total[ci].repeat(lengths)
        return p.astype(np.float32)

    def prob_of(self, hist: np.ndarray, avail: np.ndarray, w: np.ndarray) -> np.ndarray:
        """p(w[r] | history r) (m,), float64, without building (m, V)."""
        V, D = self.vocab_size, self.D
        p = np.full(len(hist), 1.0 / V)
        for o in range(1, self.n + 1):
            _, _, n_types, total, pair_keys, _, cnt = self.orders[o]
            i, found = self._contexts(hist, avail, o)
            ctx_key = self.orders[o][0][i]
            pk = ctx_key * V + w
            j = np.minimum(np.searchsorted(pair_keys, pk), len(pair_keys) - 1)
            c = np.where(pair_keys[j] == pk, cnt[j], 0.0)
            new = np.maximum(c - D, 0.0) / total[i] + D * n_types[i] / total[i] * p
            p = np.where(found, new, p)
        return p

    def _history(self, tokens: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """History (m, N-1) of tokens[pos-N+2 .. pos] (0 where before the start) and its real length."""
        h = max(self.n - 1, 0)
        idx = pos[:, None] - np.arange(h - 1, -1, -1)
        hist = np.where(idx >= 0, tokens[np.maximum(idx, 0)].astype(np.int64), 0) if h else np.zeros((len(pos), 0), np.int64)
        return hist, np.minimum(pos + 1, h)

    def stream_probs(self, tokens: np.ndarray, a: int, b: int) -> Iterator[tuple[int, torch.Tensor]]:
        for off, p, inverse in self.stream_unique(tokens, a, b):
            yield off, p[inverse]

    def stream_unique(self, tokens: np.ndarray, a: int, b: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        rows = self.rows_per_chunk()
        for s in range(a, b, rows):
            hist, avail = self._history(tokens, np.arange(s, min(b, s + rows)))
            key = avail.astype(np.int64)  # the prediction is a function of (history, its real length)
            for j in range(hist.shape[1]):
                key = key * self.vocab_size + hist[:, j]
            _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
            p = torch.from_numpy(self.dense(hist[first], avail[first])).to(self.device)
            yield s - a, p, torch.from_numpy(inverse.reshape(-1)).to(self.device)

    @torch.no_grad()
    def next_token_probs(self, windows: torch.Tensor) -> torch.Tensor:
        B, T = windows.shape
        w = windows.cpu().numpy()
        hist, avail = zip(*(self._history(row, np.arange(T)) for row in w))
        p = self.dense(np.concatenate(hist), np.concatenate(avail))
        return torch.from_numpy(p).view(B, T, -1).to(windows.device)

    @torch.no_grad()
    def token_log_probs(self, windows: torch.Tensor) -> torch.Tensor:
        B, T = windows.shape
        w = windows.cpu().numpy()
        hist, avail = zip(*(self._history(row, np.arange(T - 1)) for row in w))
        p = self.prob_of(np.concatenate(hist), np.concatenate(avail), w[:, 1:].reshape(-1))
        return torch.from_numpy(np.log(p)).float().view(B, T - 1).to(windows.device)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "smoothing": f"interpolated Kneser-Ney, D={self.D}"}


class OracleTeacher(Teacher):
    """``oracle``: the synthetic language's exact p(x_{t+1} | x_<=t) (HMM forward algorithm)."""

    def __init__(self, data: TokenDataset, device: torch.device) -> None:
        lang = data.synthetic
        if lang is None:
            raise ValueError(f"the oracle teacher needs the synthetic language; {data.dir} holds {data.meta['source']!r}. {ALTERNATIVES}")
        self.lang, self.spec, self.vocab_size, self.device = lang, "oracle", lang.vocab_size, device

    def stream_probs(self, tokens: np.ndarray, a: int, b: int) -> Iterator[tuple[int, torch.Tensor]]:
        # Documents are independent, so filtering from just after the last EOT before `a`
        # gives exactly the probabilities of a filter run from the stream's start.
        s0, hi = 0, a
        while hi > 0:
            lo = max(0, hi - 65536)
            eot = np.flatnonzero(np.asarray(tokens[lo:hi]) == self.lang.eot_token)
            if len(eot):
                s0 = lo + int(eot[-1]) + 1
                break
            hi = lo
        for off, p in self.lang.iter_next_token_probs(np.asarray(tokens[s0:b]), self.rows_per_chunk()):
            lo = max(0, a - s0 - off)
            if lo < len(p):
                yield off + lo + s0 - a, torch.from_numpy(p[lo:]).to(self.device)


def parse_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """'kind:arg?key=value&key=value' -> (kind, arg, options)."""
    body, _, query = spec.partition("?")
    kind, _, arg = body.partition(":")
    opts = dict(kv.split("=", 1) if "=" in kv else (kv, "") for kv in query.split("&") if kv)
    return kind, arg, opts


def load_teacher(spec: str, data: TokenDataset, device: torch.device, *, context: int | None = None, batch_size: int = 0) -> Teacher:
    """A Teacher from its spec (hf:NAME, ckpt:RUN, ngram:N, oracle), checked against the data's vocabulary."""
    kind, arg, _ = parse_spec(spec)
    if kind == "hf" and arg:
        t: Teacher = HFTeacher(arg, data, device, context, batch_size)
    elif kind == "ckpt" and arg:
        t = CheckpointTeacher(arg, data, device, context, batch_size)
    elif kind == "ngram":
        try:
            n = int(arg)
        except ValueError:
            raise ValueError(f"ngram teacher needs an order, e.g. ngram:3, not {spec!r}") from None
        t = NgramTeacher(n, data, device)
    elif kind == "oracle" and not arg:
        t = OracleTeacher(data, device)
    else:
        raise ValueError(f"unknown teacher {spec!r}; expected hf:NAME_OR_PATH, ckpt:RUN, ngram:N or oracle")
    if t.vocab_size != data.vocab_size:
        raise ValueError(f"teacher {spec!r} has {t.vocab_size} tokens, the data {data.vocab_size}")
    return t


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# ============================================================================ selection


def select(probs: torch.Tensor, k: int, top_p: float | None, min_prob: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher candidates per row: (ids (m, k) int64, their probs (m, k), keep (m, k) bool).

    ids are sorted by probability; keep is a prefix per row: the top k, cut to the smallest
    prefix whose mass reaches top_p (the token crossing top_p is kept), to probs >= min_prob,
    and never a zero-probability token.
    """
    p, ids = probs.topk(k, dim=-1)
    return ids, p, _keep(p, top_p, min_prob)


def _keep(p: torch.Tensor, top_p: float | None, min_prob: float) -> torch.Tensor:
    """The rule of ``select`` on probabilities p (m, k) sorted in descending order."""
    keep = (p > 0) & (p >= min_prob)
    if top_p is not None:
        keep &= (p.cumsum(-1) - p) < top_p  # mass before this token is still short of top_p
    return keep


def sample_set(probs: torch.Tensor, draws: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The distinct tokens among `draws` independent samples from each row of probs, in the
    layout of ``select``: (ids (m, draws), their probs, keep (m, draws)) with keep a prefix.

    With the true next token as one more draw, a token v is in the set with probability
    1 - (1 - p_v)^(draws + 1) when the teacher's p is the data's distribution: the relation
    ``SigmoidBCE(set_draws=draws + 1)`` inverts to read p back from a sigmoid head.
    """
    m = probs.shape[0]
    if draws == 0:
        empty = torch.zeros((m, 0), dtype=torch.int64, device=probs.device)
        return empty, empty.float(), empty.bool()
    ids = torch.multinomial(probs.float(), draws, replacement=True, generator=generator).sort(dim=1).values
    keep = torch.ones_like(ids, dtype=torch.bool)
    keep[:, 1:] = ids[:, 1:] != ids[:, :-1]
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # distinct ids first, ascending
    ids, keep = ids.gather(1, order), keep.gather(1, order)
    return ids, probs.gather(1, ids), keep


def _check_rule(select: str, top_p: float | None, min_prob: float, ratio: float, ppl_filter: float | None) -> None:
    if select not in ("top", "sample"):
        raise ValueError(f"select must be 'top' or 'sample', not {select!r}")
    if select == "sample" and (top_p is not None or min_prob > 0 or ratio < 1.0 or ppl_filter is not None):
        raise ValueError("select='sample' draws from the teacher's whole distribution at every position: top_p, min_prob, "
                         "ratio < 1 and ppl_filter would bias the draws, so they are not allowed with it (drop top_p, min_prob, ratio and ppl_filter)")


def readout_draws(select: str, k: int) -> int:
    """``set_draws`` of the sigmoid readout for sets of width k built by rule ``select``: the k
    draws of a sampled set, 1 (plain normalisation) for top-k sets."""
    return k if select == "sample" else 1


def _sanitise(spec: str) -> str:
    kind, arg, _ = parse_spec(spec)
    if kind in ("hf", "ckpt"):
        arg = Path(arg.rstrip("/")).name or arg
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{kind}_{arg}" if arg else kind).strip("_")


class _Selector:
    """Turns one chunk of teacher predictions into stored rows (ids, probs); see build_targets."""

    def __init__(self, teacher: Teacher, k: int, top_p: float | None, min_prob: float, ratio: float,
                 ppl_filter: float | None, ppl_window: int, batch_size: int, seed: int, sentinel: int,
                 rule: str = "top") -> None:
        self.t, self.k, self.top_p, self.min_prob, self.ratio = teacher, k, top_p, min_prob, ratio
        self.ppl_filter, self.ppl_window, self.batch_size = ppl_filter, ppl_window, batch_size
        self.seed, self.sentinel, self.rule = seed, sentinel, rule

    def chunk(self, tokens: np.ndarray, a: int, b: int, split_index: int, chunk_index: int) -> tuple[np.ndarray, np.ndarray, int]:
        """(ids (m, k), probs (m, k), rows holding teacher candidates) for positions a..b-1."""
        n, m, k = len(tokens), b - a, self.k
        ids, probs, keep = np.zeros((m, k), np.int64), np.zeros((m, k), np.float32), np.zeros((m, k), bool)
        # the true next token (-1 for the split's last row) and the teacher's probability of it
        y = np.full(m, -1, np.int64)
        y[: min(m, n - 1 - a)] = tokens[a + 1 : b + 1]
        py = np.zeros(m, np.float32)
        yt = torch.from_numpy(y).to(self.t.device)
        # randomness depends on (seed, split, chunk) only, so a resumed build draws the same
        rng = np.random.default_rng([self.seed, split_index, chunk_index])
        chosen = rng.random(m) < self.ratio if self.ratio < 1.0 else None  # rows given teacher candidates
        g = None
        if self.rule == "sample":
            g = torch.Generator(self.t.device).manual_seed(int(rng.integers(2**62)))
        for off, p, inverse in self.t.stream_unique(tokens, a, b):
            if g is not None and inverse is not None:  # draws are per position, not per distinct row
                p, inverse = p[inverse], None
            m_ = len(p) if inverse is None else len(inverse)
            r = slice(off, off + m_)
            rows = torch.arange(m_, device=p.device) if inverse is None else inverse
            py[r] = p[rows, yt[r].clamp(min=0)].float().cpu().numpy()
            dest = np.arange(off, off + m_)
            if inverse is None and chosen is not None:  # select only where candidates are kept
                dest = dest[chosen[r]]
                p = p[torch.from_numpy(dest - off).to(p.device)]
            i_, p_, keep_ = select(p, k, self.top_p, self.min_prob) if g is None else sample_set(p, k - 1, g)
            i_, p_, keep_ = i_.cpu().numpy(), p_.float().cpu().numpy(), keep_.cpu().numpy()
            if inverse is not None:
                inv = inverse.cpu().numpy()
                i_, p_, keep_ = i_[inv], p_[inv], keep_[inv]
            w = i_.shape[1]  # k, or k - 1 draws for the sample rule (the true token is the k-th)
            ids[dest, :w], probs[dest, :w], keep[dest, :w] = i_, p_, keep_
        if chosen is not None:
            keep &= chosen[:, None]
        if self.ppl_filter is not None:  # the true token is never filtered, nor scored
            is_y = ids == y[:, None]
            keep = (keep & self._ppl_keep(tokens, a, ids, keep & ~is_y)) | (keep & is_y)
            # compact kept candidates to the left (stable: by probability)
            order = np.argsort(~keep, axis=1, kind="stable")
            ids, probs, keep = (np.take_along_axis(x, order, 1) for x in (ids, probs, keep))
        count = keep.sum(1)  # kept candidates are now a prefix of each row
        n_teacher = int((count > 0).sum())
        r = np.flatnonzero((y >= 0) & ~((ids == y[:, None]) & keep).any(1))
        slot = np.minimum(count[r], k - 1)  # a full row gives up its least probable candidate
        ids[r, slot], probs[r, slot], keep[r, slot] = y[r], py[r], True
        ids[~keep], probs[~keep] = self.sentinel, 0.0
        return ids, probs, n_teacher

    def _ppl_keep(self, tokens: np.ndarray, a: int, ids: np.ndarray, keep: np.ndarray) -> np.ndarray:
        """False for kept candidates c whose substitution for tokens[i+1] pushes the window's
        perplexity above the threshold. All (position, candidate) windows of the chunk go
        through the teacher in batches of batch_size windows, not one forward per candidate."""
        n, W = len(tokens), min(self.ppl_window, len(tokens))
        r, c = np.nonzero(keep)
        j = a + r + 1  # the substituted index; the last row of a split has no next token
        ok = j < n
        r, c, j = r[ok], c[ok], j[ok]
        start = np.clip(j - W // 2, 0, n - W)
        win = tokens[start[:, None] + np.arange(W)].astype(np.int64)
        win[np.arange(len(j)), j - start] = ids[r, c]
        nll = np.empty(len(win), np.float64)
        bs = self.batch_size or max(1, TOKENS_PER_FORWARD // W)
        for s in range(0, len(win), bs):
            w = torch.from_numpy(win[s : s + bs]).to(self.t.device)
            nll[s : s + len(w)] = (-self.t.token_log_probs(w).double().mean(1)).cpu().numpy()
        out = np.ones_like(keep)
        out[r, c] = np.exp(nll) <= self.ppl_filter
        out[np.flatnonzero(a + np.arange(len(keep)) + 1 >= n)] = True
        return out


def build_targets(
    data_dir: Path,
    teacher: str,
    out: Path | None = None,
    *,
    k: int = 50,
    select: str = "top",
    top_p: float | None = None,
    min_prob: float = 0.0,
    ratio: float = 1.0,
    ppl_filter: float | None = None,
    ppl_window: int = 32,
    context: int | None = None,
    batch_size: int = 0,
    device: str = "auto",
    seed: int = 1337,
    store_probs: bool = False,
    progress: bool = True,
    chunk_size: int = 8192,
    on_chunk: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Build teacher sets for the train and val splits of `data_dir`; return the meta dict (also meta.json).

    Output in `out` (default data_dir/targets/<sanitised teacher>): see the module docstring.
    Per position, with `select="top"`: the teacher's top-k, restricted to the nucleus `top_p`
    and to probs >= `min_prob` (oracle: 0.01 when 0), kept at a random fraction `ratio` of
    positions; the true next token always; at most k ids. With `select="sample"`: the
    distinct tokens among k - 1 draws from the teacher's distribution plus the true token
    (k draws in all, at every position, no other rule), which a sigmoid head can turn back
    into a distribution (see ``SigmoidBCE``). `ppl_filter` drops candidate c at position i when
    the teacher's perplexity of the `ppl_window` tokens tokens[j - W//2 : j - W//2 + W]
    (j = i + 1, shifted to fit the split) with tokens[j] replaced by c exceeds it; that
    perplexity is exp of the mean NLL of the window's last W-1 tokens, each given only the
    window tokens before it. `context` is the window of hf:/ckpt: teachers (default: theirs);
    `batch_size` the windows per teacher forward (0: 16384 tokens' worth).

    Chunks of `chunk_size` positions are written to {split}.bin.partial and recorded in
    progress.json, so rerunning after an interruption resumes and gives the same bytes as an
    uninterrupted build. `on_chunk(split, chunk, n_chunks)` is called after each durable chunk.
    Raises ValueError for k > V, bad options, or a teacher whose vocabulary differs from the data's.
    """
    data = TokenDataset(Path(data_dir))
    V = data.vocab_size
    if k < 1 or k > V:
        raise ValueError(f"k={k} must be between 1 and the vocabulary size {V}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if not 0.0 <= min_prob <= 1.0:
        raise ValueError(f"min_prob must be in [0, 1], got {min_prob}")
    if ppl_filter is not None and (ppl_filter <= 1.0 or ppl_window < 2):
        raise ValueError("ppl_filter must be > 1 and ppl_window >= 2")
    _check_rule(select, top_p, min_prob, ratio, ppl_filter)
    if select == "top" and parse_spec(teacher)[0] == "oracle" and min_prob == 0.0:
        min_prob = ORACLE_MIN_PROB
    out = Path(out) if out is not None else Path(data_dir) / "targets" / _sanitise(teacher)
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)  # incomplete until the end

    dev = resolve_device(device)
    t = load_teacher(teacher, data, dev, context=context, batch_size=batch_size)
    dtype = token_dtype(V)
    sentinel = int(np.iinfo(dtype).max)
    rules = {"select": select, "top_p": top_p, "min_prob": min_prob, "ratio": ratio, "ppl_filter": ppl_filter,
             "ppl_window": ppl_window if ppl_filter is not None else None, "seed": seed}
    identity = {"teacher": t.info(), "k": k, "rules": rules, "data_hash": data.meta["hash"], "chunk_size": chunk_size, "store_probs": store_probs}
    prog_path = out / PROGRESS_FILE
    prog = json.loads(prog_path.read_text()) if prog_path.is_file() else {}
    if prog.get("identity") != json.loads(json.dumps(identity)):  # another build's leftovers: start over
        prog = {"identity": identity, "splits": {}}
    sel = _Selector(t, k, top_p, min_prob, ratio, ppl_filter, ppl_window, batch_size, seed, sentinel, select)

    stats = {}
    for si, split in enumerate(SPLITS):
        tokens = data.split(split)
        n = len(tokens)
        n_chunks = -(-n // chunk_size)
        st = prog["splits"].setdefault(split, {"done": 0, "set_size_sum": 0, "teacher_rows": 0})
        final = out / f"{split}.bin"
        paths = [(final, dtype)] + ([(out / f"{split}.probs.bin", np.float16)] if store_probs else [])
        t0, done0 = time.perf_counter(), st["done"]
        if st["done"] < n_chunks:
            # blocks allocated before mapping: a full disk is a one-line WriteError here, not a SIGBUS mid-write
            mms = [np.memmap(preallocate(p.with_name(p.name + ".partial"), n * k * np.dtype(d).itemsize, fresh=not st["done"],
                                         what=f"the {split} teacher sets", intact="the chunks built so far are kept: rerun to resume"),
                             dtype=d, mode="r+", shape=(n, k)) for p, d in paths]
            bar = _bar(progress, n_chunks, st["done"], f"{t.spec} {split}")
            for c in range(st["done"], n_chunks):
                a, b = c * chunk_size, min(n, (c + 1) * chunk_size)
                ids, probs, n_teacher = sel.chunk(tokens, a, b, si, c)
                mms[0][a:b] = ids
                if store_probs:
                    mms[1][a:b] = probs
                for mm in mms:
                    mm.flush()
                st["done"] = c + 1
                st["set_size_sum"] += int((ids != sentinel).sum())
                st["teacher_rows"] += n_teacher
                atomic_write(prog_path, json.dumps(prog, indent=1) + "\n")
                if bar is not None:
                    bar.update(1)
                if on_chunk is not None:
                    on_chunk(split, c, n_chunks)
            if bar is not None:
                bar.close()
            del mms
            for p, _ in paths:
                os.replace(p.with_name(p.name + ".partial"), p)
        seconds = time.perf_counter() - t0
        done_tokens = min(n, (st["done"] - done0) * chunk_size)
        stats[split] = {"rows": n, "mean_set_size": st["set_size_sum"] / n,
                        "teacher_rows_fraction": st["teacher_rows"] / n,
                        "seconds": seconds, "tokens_per_s": done_tokens / seconds if seconds > 0 and done_tokens else None}

    total_s = sum(s["seconds"] for s in stats.values())
    built = sum(s["tokens_per_s"] * s["seconds"] for s in stats.values() if s["tokens_per_s"])
    meta = {
        "format": FORMAT, "teacher": teacher, "teacher_info": t.info(), "teacher_fit_seconds": getattr(t, "fit_seconds", None), "k": k, "dtype": dtype.name,
        "data_hash": data.meta["hash"], "rules": rules, "store_probs": store_probs, "device": str(dev),
        "splits": stats, "mean_set_size": sum(s["mean_set_size"] * s["rows"] for s in stats.values()) / sum(s["rows"] for s in stats.values()),
        "tokens_per_s": built / total_s if total_s > 0 and built else None,
    }
    atomic_write(out / "meta.json", json.dumps(meta, indent=1) + "\n")
    prog_path.unlink(missing_ok=True)
    meta["dir"] = str(out)
    return meta


def _bar(enabled: bool, total: int, initial: int, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="chunk", dynamic_ncols=True)


# ============================================================================ online


def build_online_teacher(spec: str, data: TokenDataset, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function x (B, T) int64 -> sets (B, T, K) int64, -1 padded, aligned with y = x shifted by one.

    spec is a teacher spec with an optional query: `ckpt:RUN?k=50`, `ngram:3?k=20&top_p=0.9`,
    `hf:gpt2?k=50&min_prob=0.001`, `ckpt:RUN?select=sample&k=8`; keys k (default 50, capped
    at V), select (top | sample, as in ``build_targets``), top_p, min_prob, ratio (fraction of
    positions given a teacher set). Random choices come from torch's global RNG, which the
    training loop seeds per step. The teacher sees only the window x, so [b, t] are its
    candidates for the token after x[b, :t+1], i.e. y[b, t]. The true token is not included:
    the objective adds y itself. Runs under torch.no_grad on `device`.
    """
    kind, _, opts = parse_spec(spec)
    known = {"k", "select", "top_p", "min_prob", "ratio"}
    if set(opts) - known:
        raise ValueError(f"unknown teacher option(s) {sorted(set(opts) - known)} in {spec!r}; known: {sorted(known)}")
    teacher = load_teacher(spec.partition("?")[0], data, device)
    k = min(int(opts.get("k", 50)), teacher.vocab_size)
    top_p = float(opts["top_p"]) if "top_p" in opts else None
    rule = opts.get("select", "top")
    min_prob = float(opts.get("min_prob", ORACLE_MIN_PROB if kind == "oracle" and rule == "top" else 0.0))
    ratio = float(opts.get("ratio", 1.0))
    _check_rule(rule, top_p, min_prob, ratio, None)

    @torch.no_grad()
    def sets(x: torch.Tensor) -> torch.Tensor:
        B, T = x.shape
        out = torch.full((B * T, k), -1, dtype=torch.int64, device=teacher.device)
        windowed = isinstance(teacher, WindowedTeacher)
        for s, rows in _window_rows(teacher, x.to(teacher.device)):
            if rule == "top":
                p, ids = teacher.top_from_hidden(rows, k) if windowed else rows.topk(k, dim=-1)
                keep = _keep(p, top_p, min_prob)
            else:
                ids, _, keep = sample_set(teacher.probs_from_hidden(rows) if windowed else rows, k - 1)
            out[s : s + len(ids), : ids.shape[1]] = torch.where(keep, ids, -1)
        if ratio < 1.0:
            out[torch.rand(B * T).to(out.device) >= ratio] = -1
        return out.view(B, T, k).to(x.device)

    sets.teacher = teacher  # type: ignore[attr-defined]
    sets.set_draws = readout_draws(rule, k)  # type: ignore[attr-defined]
    return sets


def _window_rows(teacher: Teacher, x: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    """(row offset, rows) over the B*T positions of x, a bounded chunk at a time: hidden states
    (n, C) for a WindowedTeacher, next-token probabilities (n, V) for any other."""
    if isinstance(teacher, WindowedTeacher):
        if x.shape[1] > teacher.context:
            raise ValueError(f"windows of {x.shape[1]} tokens exceed the teacher's context of {teacher.context}")
        h = teacher.hidden(x)
        h = h.reshape(-1, h.shape[-1])
        rows = teacher.rows_per_chunk()
        for s in range(0, len(h), rows):
            yield s, h[s : s + rows]
    else:
        yield 0, teacher.next_token_probs(x).reshape(x.numel(), -1)


# ============================================================================ CLI


def _cmd_targets(args: argparse.Namespace) -> int:
    meta = build_targets(
        Path(args.data), args.teacher, Path(args.out) if args.out else None, k=args.k, select=args.select, top_p=args.top_p,
        min_prob=args.min_prob, ratio=args.ratio, ppl_filter=args.ppl_filter, ppl_window=args.ppl_window,
        context=args.context, batch_size=args.batch_size, device=args.device, seed=args.seed, store_probs=args.store_probs,
    )
    name = Path(meta["dir"]).name
    print(f"teacher sets in {meta['dir']}: mean set size {meta['mean_set_size']:.2f} (k={meta['k']}), "
          + (f"{meta['tokens_per_s']:,.0f} tokens/s" if meta["tokens_per_s"] else "nothing left to build"))
    print(f"train with: gptv train --variant sig --data {args.data} --targets={name}")
    return 0


def register_cli(subparsers) -> None:
    """Add `gptv targets`."""
    p = subparsers.add_parser("targets", help="build teacher next-token sets for the sigmoid variants")
    p.add_argument("--data", required=True, help="prepared data folder")
    p.add_argument("--teacher", required=True, help="hf:NAME_OR_PATH | ckpt:RUN | ngram:N | oracle")
    p.add_argument("--out", default=None, help="output folder (default DATA/targets/<teacher>)")
    p.add_argument("--k", type=int, default=50, help="most ids per position, the true next token included")
    p.add_argument("--select", choices=("top", "sample"), default="top",
                   help="top: the teacher's most probable tokens (the study); sample: the distinct tokens among k-1 draws from the teacher")
    p.add_argument("--top-p", type=float, default=None, help="keep only the nucleus of mass P")
    p.add_argument("--min-prob", type=float, default=0.0, help="keep candidates with probability >= P (oracle default 0.01)")
    p.add_argument("--ratio", type=float, default=1.0, help="fraction of positions given teacher candidates (study: 0.5)")
    p.add_argument("--ppl-filter", type=float, default=None, help="drop candidates that raise the window perplexity above X (study: 100)")
    p.add_argument("--ppl-window", type=int, default=32, help="tokens in the perplexity-filter window")
    p.add_argument("--context", type=int, default=None, help="window of hf:/ckpt: teachers (default: their context)")
    p.add_argument("--batch-size", type=int, default=0, help="teacher windows per forward (0: 16384 tokens' worth)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--store-probs", action="store_true", help="also save the teacher probabilities (float16)")
    p.set_defaults(func=_cmd_targets)
