"""Sampling from a trained GPT: KV-cached, batched, sliding past block_size, for every head.

Context-window policy (``window.py``)
    Position embeddings are learned and absolute (0 .. block_size-1), so a full cache cannot
    just drop its oldest entry: every remaining key/value was computed at a position that would
    now be off by one. Instead, when the next token would make a row's context longer than
    block_size, its context is cut to its last ``keep = block_size - slide`` tokens, which are
    re-encoded (prefilled) from position 0; it then grows one token per step until it is full
    again. ``slide`` defaults to block_size // 4, so the re-prefill (keep tokens) is paid once
    every slide + 1 tokens. A prompt longer than block_size keeps its last block_size tokens.
    The uncached path (``use_cache=False``) feeds exactly the same windows, recomputed at every
    step, so both paths condition on the same tokens at the same positions and greedy decoding
    gives the same output; ``window_start`` is the policy, shared with ``api.LanguageModel.score``.

Rows (``decoder.py``)
    Every row has its own prompt length, positions, window, sampling options and random
    stream (a torch.Generator seeded from the row's seed), so rows of any lengths decode as one
    batch and a row's output does not depend on the rows beside it: greedy tokens are those of
    the row decoded alone, and so are sampled ones given its seed (up to float rounding; MC
    dropout's masks are the exception, drawn over the batch). Rows can join a running batch
    and leave it when they end (continuous batching, as ``gptv serve`` does).

One decoding step, per row
    1. the predictive distribution p of the next token (``predictive.Predictor.draws``): softmax,
       a sigmoid head's normalised readout per row (the study normalised over the whole batch),
       or the mixture of S draws (a Bayesian head's draws, MC dropout, ensembles, snapshots).
    2. scores, with softmax(scores) = p: the raw logits for a single softmax draw, log p
       otherwise. The CTRL repetition penalty acts on them.
    3. sigmoid ``set`` mode keeps only the tokens with sigmoid(z) > tau (draw-averaged), the
       scores of the others become -inf; if no token clears tau, the argmax of sigmoid(z).
    4. greedy (``greedy=True`` or temperature <= 0): argmax of the scores; otherwise scores /
       temperature, then top-k, then top-p (nucleus), then one draw from the result.
    Reported details (probability of the chosen token, entropy, mutual information, the top
    alternatives, a sigmoid head's set, the chosen token's probability under each draw)
    describe the model's predictive p of step 1, not the filtered distribution that was sampled.

The predictive (``predict.prediction``)
    A ``Predictor`` brings its own (any method, ensembles, a fitted temperature); a bare GPT is
    read under ``prediction`` (default: its head's own draws, the run's mc_samples of them).
    For a Bayesian head: ``mc_samples=0`` the posterior mean; the default method S draws of the
    logits at every step (local reparameterisation, ``heads.BayesianHead.logits``) from one
    backbone pass; the method ``sequence`` one weight draw per row, kept for its whole generation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch

from ..common.errors import InputError
from ..predict.methods import Run
from ..predict.prediction import Prediction, build_predictor
from ..predict.predictive import Predictor
from .decoder import SIG_MODES, Decoder, Generation, Row, RowOptions, check_prompt
from .filters import (
    apply_repetition_penalty,
    draw_rows,
    restrict_to_sets,
    sampling_probs,
    top_k_filter,
    top_p_filter,
)
from .window import ContextWindow, default_slide, keep_tokens, window_start


def predictor_of(model, prediction: Prediction | None = None, seed: int | None = None) -> Predictor:
    """What a decoder reads: ``model`` itself when it is a Predictor (it has its own predictive),
    else a bare GPT's predictor under ``prediction`` (default ``Prediction()``; its seed, else ``seed``)."""
    if isinstance(model, Predictor):
        if prediction is not None:
            raise InputError("prediction describes the predictive of a bare model; a Predictor has its own")
        return model
    prediction = prediction or Prediction()
    if prediction.seed is None:
        prediction = prediction.but(seed=seed)
    return build_predictor([Run(None, model)], prediction, generation=True)


def row_seed(seed: int | None, row: int) -> int | None:
    """The seed of row ``row`` of a batch sampled with ``seed``: ``seed`` itself for row 0 (so one
    prompt gives the same tokens alone, in a batch, streamed or served), and for the others
    independent streams (numpy's SeedSequence of (seed, row))."""
    if seed is None or row == 0:
        return seed
    return int(np.random.SeedSequence([seed % 2**64, row]).generate_state(1, np.uint64)[0] >> np.uint64(1))


@torch.no_grad()
def generate(
    model,
    prompts: Sequence[Sequence[int]] | torch.Tensor,
    max_new_tokens: int,
    *,
    seed: int | None = None,
    prediction: Prediction | None = None,
    use_cache: bool = True,
    slide: int | None = None,
    stop_fn: Callable[[int, list[int]], bool] | None = None,
    return_details: bool = False,
    **options: Any,
) -> list[list[int]] | list[Generation]:
    """Continue each prompt by up to ``max_new_tokens`` tokens (see the module docstring).

    model: a GPT, or a ``Predictor`` (any predictive: a method, ensembles, temperature); with a
    GPT, ``prediction`` (``predict.prediction.Prediction``: method, mc_samples) chooses its predictive.
    prompts: token-id lists (any lengths, each non-empty) or a (B, T) LongTensor, decoded as one
    batch; a row's tokens do not depend on the other rows (module docstring).
    seed: makes sampling and every draw reproducible; row i samples from its own stream,
    seeded ``row_seed(seed, i)``. stop_fn(row, tokens): called after each new token of a row;
    True ends it (for stop strings, which need the tokenizer). use_cache / slide: ``window.py``.
    options: ``decoder.RowOptions`` (temperature, top_k, top_p, repetition_penalty, greedy,
    stop_tokens, sig_mode, tau, top_n; ValueError when out of range).
    Returns the new tokens per row, or ``Generation`` records when ``return_details`` (with
    the top alternatives, sets and per-draw probabilities when ``top_n`` > 0).
    """
    options["details"] = return_details or options.get("top_n", 0) > 0
    decoder, rows = _decoder(
        model, prompts, max_new_tokens, options, stop_fn=stop_fn, seed=seed, prediction=prediction,
        use_cache=use_cache, slide=slide,
    )  # fmt: skip
    with decoder.predictor.fixed_weights():
        while decoder.active:
            decoder.step()
    return [r.gen for r in rows] if return_details else [r.gen.tokens for r in rows]


def stream(
    model,
    prompt: Sequence[int],
    max_new_tokens: int,
    *,
    seed: int | None = None,
    prediction: Prediction | None = None,
    use_cache: bool = True,
    slide: int | None = None,
    return_details: bool = True,
    **options: Any,
) -> Iterator[tuple[int, Generation]]:
    """Decode one prompt lazily: yield (index, generation) as each new token is appended to
    ``generation`` (its ``tokens[-1]``); options as ``generate``."""
    options["details"] = return_details or options.get("top_n", 0) > 0
    decoder, (row,) = _decoder(
        model, [prompt], max_new_tokens, options, seed=seed, prediction=prediction, use_cache=use_cache, slide=slide
    )
    with decoder.predictor.fixed_weights():
        while decoder.active:
            n = len(row.gen.tokens)
            decoder.step()
            if len(row.gen.tokens) > n:
                yield n, row.gen


def _decoder(
    model,
    prompts,
    max_new_tokens: int,
    options: dict,
    *,
    stop_fn=None,
    seed: int | None = None,
    use_cache: bool = True,
    slide: int | None = None,
    prediction: Prediction | None = None,
) -> tuple[Decoder, list[Row]]:
    """A decoder holding one row per prompt (see ``generate``)."""
    ids = [list(map(int, r)) for r in (prompts.tolist() if isinstance(prompts, torch.Tensor) else prompts)]
    predictor = predictor_of(model, prediction, seed)
    for i, r in enumerate(ids):
        check_prompt(r, predictor.vocab_size, f"prompt {i}")
    RowOptions(max_new_tokens, **options)  # checked once, even without prompts
    decoder = Decoder(predictor, use_cache=use_cache, slide=slide)
    rows = []
    for i, r in enumerate(ids):
        row_options = RowOptions(
            max_new_tokens, stop_fn=None if stop_fn is None else partial(stop_fn, i), seed=row_seed(seed, i), **options
        )
        rows.append(decoder.add(Row(r, row_options)))
    return decoder, rows


__all__ = [
    "SIG_MODES",
    "ContextWindow",
    "Decoder",
    "Generation",
    "Row",
    "RowOptions",
    "apply_repetition_penalty",
    "default_slide",
    "draw_rows",
    "generate",
    "keep_tokens",
    "predictor_of",
    "restrict_to_sets",
    "row_seed",
    "sampling_probs",
    "stream",
    "top_k_filter",
    "top_p_filter",
    "window_start",
]
