"""The ``diversity`` section of ``gptv eval``: continuations of prompts from the text, and how varied they are."""

from __future__ import annotations

import time
from typing import Any, cast

import numpy as np

from .. import metrics as M
from ..common.errors import InputError
from ..decode.generate import generate
from ..predict.predictive import Predictor

PROMPT_TOKENS = 16


def pick_prompts(
    tokens: np.ndarray, n: int, length: int = PROMPT_TOKENS, seed: int = 1337
) -> tuple[list[list[int]], bool]:
    """n prompts of ``length`` tokens from the split: distinct non-overlapping windows at
    offsets k * length chosen with a fixed seed, drawn with replacement only when n exceeds
    the number of windows. Returns (prompts, drawn_with_replacement)."""
    available = len(tokens) // length
    if available < 1:
        raise InputError(f"the split ({len(tokens)} tokens) is shorter than one prompt of {length} tokens")
    replace = n > available
    picks = np.random.default_rng(seed).choice(available, size=n, replace=replace)
    return [tokens[k * length : (k + 1) * length].astype(np.int64).tolist() for k in picks], replace


def sample_diversity(
    predictor: Predictor, tokenizer, tokens: np.ndarray, *, num_samples: int, max_new_tokens: int, seed: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Sample continuations of prompts from ``tokens`` and measure their diversity.

    Prompts: pick_prompts(tokens, num_samples, PROMPT_TOKENS, seed). Sampling: exactly
    max_new_tokens tokens (no stop token), temperature 1, no top-k / top-p, seed ``seed``;
    tokens are drawn from the predictive distribution that is scored (Bayesian heads: the
    Monte-Carlo mixture of fresh draws at every step; sigmoid heads: their normalised readout).
    Metrics use the decoded continuations only (no prompt).
    """

    prompts, replaced = pick_prompts(tokens, num_samples, PROMPT_TOKENS, seed)
    t0 = time.perf_counter()
    # without return_details, generate returns each prompt's new token ids
    new = cast(
        list[list[int]], generate(predictor, prompts, max_new_tokens, temperature=1.0, seed=seed, sig_mode="normalize")
    )
    seconds = time.perf_counter() - t0
    texts = [tokenizer.decode(ids) for ids in new]
    samples = [
        {"prompt": tokenizer.decode(p), "continuation": t, "new_tokens": len(ids)}
        for p, t, ids in zip(prompts, texts, new)
    ]
    n_new = sum(len(ids) for ids in new)
    metrics = {
        "num_samples": len(texts),
        "prompt_tokens": PROMPT_TOKENS,
        "max_new_tokens": max_new_tokens,
        "prompts_with_replacement": replaced,
        "self_bleu": M.self_bleu(texts) if len(texts) > 1 else None,
        **{f"distinct_{n}": M.distinct_n(texts, n) for n in range(1, 5)},
        "distinct_4_study": M.distinct4_study(texts),
        **{f"distinct_{n}_tokens": M.distinct_n_tokens(new, n) for n in (2, 4)},
        "mean_length_words": M.mean_length_words(texts),
        "mean_new_tokens": n_new / len(texts),
    }
    return {**metrics, "tokens_per_s": n_new / seconds if seconds > 0 else None}, samples
