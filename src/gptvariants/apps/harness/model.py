"""The lm-evaluation-harness model ``gptv``: any run, every head, through its own predictive distribution.

Importing this module registers the class with lm-eval (it needs the ``eval`` extra). Requests:

loglikelihood          (context, continuation): log p(continuation | context) = sum over the
                       continuation's tokens of log p(token | everything before it), and whether
                       every one of them is the argmax of p. Context and continuation are encoded
                       together (lm-eval's ``TemplateLM`` convention); an empty context is the
                       end-of-text token (token 0 for tokenizers without one, like ``generate``).
                       One window of block_size tokens ends before the last target (lm-eval's
                       Hugging Face convention), so a long context keeps its end; a continuation
                       longer than block_size is scored in chunks of block_size targets, each
                       from the block_size tokens before its own last target.
loglikelihood_rolling  the whole text, end-of-text prepended when the tokenizer has one (else the
                       first token is context only), in disjoint windows of block_size: exactly
                       ``gptv eval --text FILE --stride block_size`` (same windows, batches and,
                       for Bayesian heads, the same seeded draws), one document at a time.
generate_until         ``LanguageModel.generate`` with the stop strings and max_gen_toks; greedy
                       unless the task samples (do_sample / temperature, top_k, top_p).

p is ``LanguageModel.predictor`` under the ``Prediction`` of the model_args (``method``,
``mc_samples``, ``seed``): softmax, the sigmoid heads' readout, or for Bayesian heads the mixture
of ``mc_samples`` head draws (the default) or the posterior mean (``mc_samples=0``). lm-eval
configs may still say ``bayes_mode`` (mean | step | sequence), mapped by
``prediction.from_bayes_mode``. The draws are seeded: each loglikelihood request is scored under
the same S draws (so results do not depend on batching or order, and the choices of a question
share them), and each rolling document restarts the seed as ``gptv eval`` does.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import normalize_gen_kwargs
from tqdm import tqdm

from ...common.errors import InputError
from ...metrics import continuation_windows, sliding_windows
from ...predict.prediction import from_bayes_mode
from ...predict.predictive import CHUNK_FLOATS, score_windows
from ..api import load

log = logging.getLogger(__name__)

# gptv eval's window batch and readout budget (evaluate.evaluate / evaluate.score): the rolling
# log-likelihood feeds the same groups of windows so that a Bayesian head meets the same draws
EVAL_BATCH = 16
EVAL_BUDGET = CHUNK_FLOATS // 2
UNKNOWN = ("skip", "error")
SAMPLING_KEYS = ("temperature", "top_k", "top_p", "repetition_penalty")

Window = tuple[int, int, int]  # (begin, end, score_from), as predictive.score_windows


def _auto_device(device: str | None) -> str:
    """lm-eval's CLI passes --device (default cuda:0): fall back to the CPU where CUDA is absent."""
    if device in (None, "auto"):
        return "auto"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        log.warning("device %s asked for but CUDA is not available: running on the CPU", device)
        return "cpu"
    return str(device)


@register_model("gptv", "gptvariants")
class GPTVariantsLM(TemplateLM):
    """A gptvariants run as an lm-eval model (module docstring).

    model_args: run (the run folder), method (``methods.METHODS``, default 'default'), mc_samples
    (its draws; default the run's, 0 = the point estimate), bayes_mode (the old spelling: 'mean' =
    mc_samples 0, 'step' = the default method, 'sequence'), seed (of the draws and of sampled
    generation; default 1337 as ``gptv eval``), unknown ('skip': drop text the tokenizer cannot
    encode and report it, as ``gptv eval --text``; 'error'), batch_size (sequences per forward
    pass), max_gen_toks (default 256), dtype (``prediction.DTYPES``: the weights to score in, default
    float32). device comes from lm-eval's --device.
    """

    def __init__(
        self,
        run: str | None = None,
        method: str | None = None,
        mc_samples: int | None = None,
        bayes_mode: str | None = None,
        seed: int = 1337,
        unknown: str = "skip",
        batch_size: int | str | None = 16,
        max_gen_toks: int = 256,
        dtype: str | None = None,
        device: str | None = None,
        **unused: Any,
    ) -> None:
        super().__init__()
        if not run:
            raise InputError("the gptv model needs the run folder: --model_args run=RUN")
        unused = {k: v for k, v in unused.items() if v is not None and k != "max_batch_size"}
        if unused:
            raise InputError(
                f"unknown gptv model_args {sorted(unused)}; known: run, method, mc_samples, bayes_mode, seed, "
                "unknown, batch_size, max_gen_toks, dtype"
            )
        if unknown not in UNKNOWN:
            raise InputError(f"unknown must be one of {UNKNOWN}, got {unknown!r}")
        self.seed, self.unknown = int(seed), unknown
        samples = None if mc_samples is None else int(mc_samples)
        prediction = from_bayes_mode(bayes_mode, method=method, mc_samples=samples, seed=self.seed, dtype=dtype)
        self.lm = load(run, _auto_device(device), prediction=prediction)
        self._device = self.lm.device
        self.run = str(run)
        self.batch_size = 16 if batch_size in (None, "auto") or str(batch_size).startswith("auto") else int(batch_size)
        self.max_gen_toks = int(max_gen_toks)
        self.predictor = self.lm.predictor()  # scoring: a method for generation only is refused here
        self.dropped: Counter = Counter()

    # ------------------------------------------------------------------ what lm-eval asks of a model

    @property
    def eot_token_id(self) -> int:
        """Conditions an empty context: end-of-text, or token 0 (``LanguageModel.start_token``)."""
        return self.lm.start_token

    @property
    def max_length(self) -> int:
        return self.lm.model.config.block_size

    @property
    def tokenizer_name(self) -> str:
        return self.lm.tokenizer.name

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        if self.unknown == "skip":
            self.dropped.update(self.lm.tokenizer.unknown(string))
        return self.lm.tokenizer.encode(string, unknown=self.unknown)

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return self.lm.tokenizer.decode(tokens)

    def get_model_info(self) -> dict[str, Any]:
        c = self.lm.config
        return {
            "gptv_run": self.run,
            "gptv_variant": c.objective.variant,
            "gptv_method": self.lm.prediction.method,
            "gptv_mc_samples": self.predictor.n_draws,
            "gptv_seed": self.seed,
        }

    def _report_dropped(self) -> None:
        if self.dropped:
            shown = ", ".join(f"{k!r} x{v}" for k, v in self.dropped.most_common(5))
            log.warning(
                "dropped %d piece(s) the run's tokenizer cannot encode (%s); pass unknown=error to refuse them",
                sum(self.dropped.values()),
                shown,
            )
            self.dropped.clear()

    # ------------------------------------------------------------------ loglikelihood

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        for context, continuation in (r.args for r in requests):
            if not context and not self.lm.tokenizer.encode(continuation, unknown="skip"):
                raise InputError(f"the continuation {continuation!r} has no token the run's tokenizer can encode")
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm)

    def _loglikelihood_tokens(
        self, requests: list[tuple[tuple[str, str], list[int], list[int]]], disable_tqdm: bool = False, **kwargs: Any
    ) -> list[tuple[float, bool]]:
        """(sum of log p, all greedy) per (strings, context ids, continuation ids), in order."""
        self._report_dropped()
        block = self.max_length
        plans = []
        for strings, ctx, cont in requests:
            ctx = ctx or [self.prefix_token_id]  # a blank context, emptied by moving its spaces to the continuation
            if not cont:
                raise InputError(f"the continuation {strings[1]!r} has no token the run's tokenizer can encode")
            tokens = ctx + cont
            plans.append((tokens, continuation_windows(len(ctx), len(tokens), block)))
        out: list[tuple[float, bool] | None] = [None] * len(requests)
        for i, hidden in self._encoded(plans, disable_tqdm):
            tokens, windows = plans[i]
            y = torch.tensor(tokens[windows[0][2] :], device=self.device)
            out[i] = self._continuation_score(hidden, y)
            self.cache_hook.add_partial("loglikelihood", requests[i][0], out[i])
        return out  # type: ignore[return-value]

    def _encoded(
        self, plans: list[tuple[list[int], list[Window]]], disable_tqdm: bool
    ) -> Iterator[tuple[int, list[torch.Tensor]]]:
        """Run every window through the backbone, batch_size at a time, longest first (right padding
        is invisible to a causal model); yield (request, hidden states of its targets, one (n, C)
        per backbone pass) as soon as all of a request's windows are done."""
        rows = sorted(
            ((e - b, i, k) for i, (_, windows) in enumerate(plans) for k, (b, e, _) in enumerate(windows)), reverse=True
        )
        parts: dict[int, dict[int, list[torch.Tensor]]] = {}
        for s in tqdm(range(0, len(rows), self.batch_size), disable=disable_tqdm, desc="gptv loglikelihood"):
            batch = rows[s : s + self.batch_size]
            x = torch.zeros(len(batch), batch[0][0] - 1, dtype=torch.long)
            for r, (_, i, k) in enumerate(batch):
                b, e, _ = plans[i][1][k]
                x[r, : e - 1 - b] = torch.tensor(plans[i][0][b : e - 1])
            hs = self.predictor.encode(x.to(self.device))
            for r, (_, i, k) in enumerate(batch):
                b, e, first = plans[i][1][k]
                parts.setdefault(i, {})[k] = [h[r, first - b - 1 : e - b - 1] for h in hs]
                if len(parts[i]) == len(plans[i][1]):
                    done = parts.pop(i)
                    yield i, [torch.cat([done[j][p] for j in range(len(done))]) for p in range(len(hs))]

    @torch.no_grad()
    def _continuation_score(self, hidden: list[torch.Tensor], y: torch.Tensor) -> tuple[float, bool]:
        """Sum of log p(y) and whether y is the argmax everywhere, under the request's seeded draws."""
        self.predictor.generator.manual_seed(self.seed)
        total, greedy = 0.0, True
        step = self.predictor.rows_per_chunk()
        for c in range(0, len(y), step):
            draws = self.predictor.draws([h[c : c + step] for h in hidden])
            total += float(draws.logprob(y[c : c + step]).double().sum())
            greedy = greedy and bool((draws.log_p.argmax(-1) == y[c : c + step]).all())
        return total, greedy

    # ------------------------------------------------------------------ rolling

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """log p(text) per request, scored as ``gptv eval --stride block_size`` scores a file."""
        out = []
        for req in tqdm(requests, disable=disable_tqdm, desc="gptv loglikelihood_rolling"):
            (text,) = req.args
            ids = self.tok_encode(text)
            if self.lm.tokenizer.eot_token is not None:
                ids = [self.lm.tokenizer.eot_token] + ids
            out.append(self._rolling(ids))
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), out[-1])
        self._report_dropped()
        return out

    @torch.no_grad()
    def _rolling(self, ids: list[int]) -> float:
        if len(ids) < 2:
            return 0.0
        self.predictor.generator.manual_seed(self.seed)
        windows = sliding_windows(len(ids), self.max_length, self.max_length)
        total = 0.0
        for _, y, draws in score_windows(self.predictor, ids, windows, batch=EVAL_BATCH, budget=EVAL_BUDGET):
            total += float(draws.logprob(y).double().sum())
        return total

    # ------------------------------------------------------------------ generation

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Continuations until a stop string, end-of-text or max_gen_toks; requests with the same
        generation arguments are decoded together, batch_size prompts at a time."""
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(repr(sorted(req.args[1].items())), []).append(i)
        out: list[str | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="gptv generate_until")
        for members in groups.values():
            options, max_new = self._generation_options(requests[members[0]].args[1])
            members.sort(key=lambda i: -len(requests[i].args[0]))
            for s in range(0, len(members), self.batch_size):
                chunk = members[s : s + self.batch_size]
                prompts = [requests[i].args[0] for i in chunk]
                with warnings.catch_warnings():  # long few-shot prompts keep their last block_size tokens
                    warnings.filterwarnings("ignore", message="prompt of .* tokens is longer than block_size")
                    texts = self.lm.generate(prompts, max_new, **options)
                for i, text in zip(chunk, texts):
                    out[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
                bar.update(len(chunk))
        bar.close()
        return out  # type: ignore[return-value]

    def _generation_options(self, gen_kwargs: dict[str, Any]) -> tuple[dict[str, Any], int]:
        kw = dict(normalize_gen_kwargs(gen_kwargs, self.max_gen_toks))
        until, max_new = kw.pop("until"), kw.pop("max_gen_toks")
        sample = bool(kw.pop("do_sample", False)) and float(kw.get("temperature") or 0.0) > 0.0
        options: dict[str, Any] = {
            "stop": [s for s in until if s],
            "unknown": self.unknown,
            "seed": self.seed,
        }
        options.update({k: kw.pop(k) for k in SAMPLING_KEYS if k in kw} if sample else {"greedy": True})
        for k in SAMPLING_KEYS:
            kw.pop(k, None)
        if kw:
            log.warning("gptv ignores the generation arguments %s", sorted(kw))
        return options, max_new
