"""The Python API: load a run folder, then generate text, stream it, or score it.

    >>> import gptvariants
    >>> lm = gptvariants.load("runs/baseline")
    >>> lm.generate("The king", max_new_tokens=50, temperature=0.8, top_k=40, seed=0)
    >>> for token in lm.stream("The king", max_new_tokens=20, top_n=5): print(token.text, token.top)
    >>> lm.score("The king is dead.")[0]   # TokenRecord(id=..., text=..., logprob=..., entropy=..., mi=None)

Every probability comes from the run's predictive distribution (``predictive.Predictor``), as
described by a ``prediction.Prediction`` (method, mc_samples, temperature, seed): the one given to
``load``, with a call's own ``method`` / ``mc_samples`` / ``seed`` when it names them
(``mc_samples=0``: the point estimate, e.g. a Bayesian head's posterior mean).

Prompts are text. An empty prompt starts from the tokenizer's end-of-text token, or from token
0 when the tokenizer has none (the char tokenizer): the model needs one token to condition on.
A prompt longer than block_size keeps its last block_size tokens, with a warning.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, cast

import torch

from ..common.checks import check_arguments
from ..common.errors import InputError, WrongType
from ..common.runtime import resolve_device
from ..data.tokenizers import load_tokenizer
from ..decode.decoder import Decoder, Generation, Row, RowOptions
from ..decode.generate import generate
from ..decode.window import generation_windows
from ..predict.conformal import lac_min_prob
from ..predict.methods import Run, load_runs
from ..predict.prediction import Prediction, build_predictor
from ..predict.predictive import Draws, Predictor, score_windows

SCORE_BATCH = 16  # windows per forward pass of score(): one window at a time costs ~1.3x one batched pass


@dataclass
class TokenRecord:
    """One token with the model's log-probability of it, the predictive entropy (nats) and,
    when the predictive has several draws, the mutual information (nats; None otherwise).
    With ``top_n``: ``top``, the most probable tokens as (text, prob); ``set``, a sigmoid head's
    set {v : sigmoid(z_v) > tau} as texts; ``draws``, this token's probability under each draw.
    ``scores`` (``score`` only): energy and max_logit, and the density scores when the run has a
    fitted density (``evaluate.uncertainty``'s scores of the same names).
    With ``conformal``: the size of the conformal set at that alpha and whether it holds the token."""

    id: int
    text: str
    logprob: float
    entropy: float
    mi: float | None = None
    top: list[tuple[str, float]] | None = None
    set: list[str] | None = None
    draws: list[float] | None = None
    scores: dict[str, float] | None = None
    set_size: int | None = None
    in_set: bool | None = None

    @property
    def prob(self) -> float:
        return math.exp(self.logprob)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: id, text, prob, logprob, entropy, and mi / top / set / draws when available
        (the record's own lists, not copies: dataclasses.asdict's deep copy was most of a streamed
        token's cost on the server)."""
        d = {k: v for k, v in vars(self).items() if v is not None}
        d["prob"] = self.prob
        return d


@dataclass
class Completion:
    """A prompt, its continuation text (stop string removed) and the continuation's tokens."""

    prompt: str
    text: str
    tokens: list[TokenRecord]
    finish_reason: str  # 'length' | 'stop_token' (end-of-text or another stop token) | 'stop_string'


class DecoderKey(NamedTuple):
    """What a decoder needs beyond its rows: rows with equal keys can share one (``LanguageModel.new_decoder``)."""

    method: str | None
    mc_samples: int | None
    use_cache: bool
    slide: int | None


class TokenStream:
    """One prompt's continuation as ``TokenRecord``s while it is decoded (``LanguageModel.token_stream``):
    ``row`` (a ``decoder.Row``) goes into a decoder made for ``key``, and ``take()`` returns the
    records of the tokens decoded since the last call. A stop string ends the row; the token that
    completes it is not given."""

    def __init__(
        self, lm: LanguageModel, ids: list[int], stop: list[str], options: dict[str, Any], key: DecoderKey
    ) -> None:
        self.lm, self.stop, self.key = lm, stop, key
        self.longest = max(map(len, stop), default=0)
        self.pieces = lm.tokenizer.pieces(ids)
        self.text = ""
        self.pending: list[TokenRecord] = []
        self.row = Row(ids, RowOptions(**options, stop_fn=self._on_token))

    def _on_token(self, tokens: list[int]) -> bool:
        """After each token (in the decoding thread): its text, and True when a stop string appears."""
        k = len(tokens) - 1
        piece = self.pieces.next(tokens[k])
        self.text += piece
        if self.stop and any(s in self.text[-(len(piece) + self.longest) :] for s in self.stop):
            return True
        self.pending.append(self.lm._record(self.row.gen, k, piece))
        return False

    def take(self) -> list[TokenRecord]:
        out, self.pending = self.pending, []
        return out


def load(
    run_dir: str | Path | Sequence[str | Path],
    device: str | torch.device = "cpu",
    *,
    method: str = "default",
    mc_samples: int | None = None,
    temperature: bool = True,
    prediction: Prediction | None = None,
) -> LanguageModel:
    """A run folder's current checkpoint and tokenizer as a ``LanguageModel`` (CheckpointError
    when the checkpoint is missing or half-written). ``device='auto'``: ``runtime.resolve_device``'s rule.

    Several runs ("A,B", a list, or a folder of run folders) make an ensemble averaged in
    probability. ``method``: an uncertainty method of ``methods.METHODS`` (default: the heads'
    own draws); ``mc_samples``: its draws (None: the run's; 0: the point estimate);
    ``temperature``: apply the temperature ``gptv calibrate`` fitted (when there is one).
    ``prediction``: the three at once (a ``Prediction``), in their place.
    """
    if isinstance(device, str):
        device = check_arguments({"device": device})["device"]
    prediction = prediction or Prediction(method, mc_samples, temperature)  # checks its own fields
    runs = load_runs(run_dir, resolve_device(device))
    prediction.check(runs, generation=True)
    first = runs[0]
    return LanguageModel(first.model, first.config, load_tokenizer(first.folder), runs=runs, prediction=prediction)


class LanguageModel:
    """A trained GPT with its tokenizer: ``generate`` text, ``stream`` it, ``score`` text token by token.

    ``model`` (the GPT, eval mode; an ensemble's first run), ``config`` (its Config) and
    ``tokenizer`` are public. Every probability comes from ``predictor()``: the runs (``runs``)
    under ``prediction`` (default ``Prediction()``), or a call's own method, mc_samples and seed.
    """

    def __init__(
        self,
        model,
        config,
        tokenizer,
        *,
        runs: Sequence[Run] | None = None,
        prediction: Prediction | None = None,
    ) -> None:
        self.model, self.config, self.tokenizer = model.eval(), config, tokenizer
        self.runs = list(runs) if runs is not None else [Run(None, self.model, config)]
        self.prediction = prediction or Prediction()
        self.start_token = tokenizer.eot_token if tokenizer.eot_token is not None else 0
        self._token_texts: dict[int, str] = {}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode_prompt(self, prompt: str, unknown: str = "error") -> list[int]:
        """Token ids to condition on: the start token for an empty prompt; the last block_size
        tokens (with a warning) for a long one. ``unknown``: 'error' (ValueError) or 'skip'."""
        if not isinstance(prompt, str):
            raise WrongType(f"prompt: expected a str, got {type(prompt).__name__} {prompt!r:.40}")
        ids = self.tokenizer.encode(prompt, unknown=unknown) or [self.start_token]
        block = self.model.config.block_size
        if len(ids) > block:
            warnings.warn(
                f"prompt of {len(ids)} tokens is longer than block_size {block}: keeping its last {block} tokens",
                stacklevel=3,
            )
            ids = ids[-block:]
        return ids

    def generate(self, prompt: str | Sequence[str], max_new_tokens: int = 200, **kwargs: Any) -> str | list[str]:
        """The continuation text of ``prompt`` (a str, or a list of str -> a list).

        Keyword arguments: ``stop`` (a string or strings that end a sample, cut from the text),
        ``stop_at_eot`` (default True: the end-of-text token ends a sample), ``unknown``
        ('error' | 'skip'), the prediction's ``method`` and ``mc_samples`` (``predictor``), and the
        sampling options of ``generate.generate``: temperature, top_k, top_p, repetition_penalty,
        greedy, seed, use_cache, sig_mode, tau, stop_tokens, top_n.
        """
        out = self.generate_details(prompt, max_new_tokens, **kwargs)
        return out.text if isinstance(out, Completion) else [c.text for c in out]

    def _stops(
        self, stop: str | Sequence[str], stop_at_eot: bool, stop_tokens: Sequence[int]
    ) -> tuple[list[str], list[int]]:
        strings = [stop] if isinstance(stop, str) else list(stop)
        if not all(isinstance(x, str) for x in strings):
            raise WrongType(f"stop: expected a string or a list of strings, got {stop!r:.60}")
        ids = list(stop_tokens)
        vocab = self.config.model.vocab_size
        bad = [t for t in ids if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab]
        if bad:
            raise InputError(f"stop_tokens: {bad[0]!r} is not a token id of this model (an integer in [0, {vocab}))")
        if stop_at_eot and self.tokenizer.eot_token is not None:
            ids.append(self.tokenizer.eot_token)
        return [x for x in strings if x], ids

    def generate_details(
        self,
        prompt: str | Sequence[str],
        max_new_tokens: int = 200,
        *,
        stop: str | Sequence[str] = (),
        stop_at_eot: bool = True,
        unknown: str = "error",
        stop_tokens: Sequence[int] = (),
        **sampling: Any,
    ) -> Completion | list[Completion]:
        """Like ``generate`` but returns ``Completion`` records with per-token details."""
        sampling = check_arguments({"max_new_tokens": max_new_tokens, "unknown": unknown, **sampling})
        max_new_tokens, unknown = sampling.pop("max_new_tokens"), sampling.pop("unknown")
        single = isinstance(prompt, str)
        if not single and not isinstance(prompt, Sequence):
            raise WrongType(f"prompt: expected a str or a list of str, got {type(prompt).__name__} {prompt!r:.40}")
        prompts: list[str] = [prompt] if isinstance(prompt, str) else list(prompt)
        ids = [self.encode_prompt(p, unknown) for p in prompts]
        stop, stops = self._stops(stop, stop_at_eot, stop_tokens)
        decode = self.tokenizer.decode

        def hit_stop_string(row: int, new: list[int]) -> bool:
            # decoding with the prompt joins the text as the tokenizer would (word spacing)
            return any(s in decode(ids[row] + new)[len(decode(ids[row])) :] for s in stop)

        source, sampling = self._source(sampling)
        gens = generate(
            source,
            ids,
            max_new_tokens,
            stop_tokens=stops,
            stop_fn=hit_stop_string if stop else None,
            return_details=True,
            **sampling,
        )
        out = [self._completion(p, i, cast(Generation, g), stop) for p, i, g in zip(prompts, ids, gens)]
        return out[0] if single else out

    def stream(self, prompt: str, max_new_tokens: int = 200, **options: Any) -> Generator[TokenRecord, None, None]:
        """Yield the continuation of one prompt token by token, as ``TokenRecord``s, while it is
        generated. Options as ``generate``; a stop string ends the stream before the token that
        completes it (that token's text is not yielded)."""
        tokens = self.token_stream(prompt, max_new_tokens, **options)
        decoder = self.new_decoder(tokens.key, seed=tokens.row.options.seed)
        decoder.add(tokens.row)
        with decoder.predictor.fixed_weights():
            while decoder.active:
                decoder.step()
                yield from tokens.take()

    def token_stream(
        self,
        prompt: str,
        max_new_tokens: int = 200,
        *,
        stop: str | Sequence[str] = (),
        stop_at_eot: bool = True,
        unknown: str = "error",
        stop_tokens: Sequence[int] = (),
        method: str | None = None,
        mc_samples: int | None = None,
        use_cache: bool = True,
        slide: int | None = None,
        return_details: bool = True,
        **sampling: Any,
    ) -> TokenStream:
        """``stream``'s row before it is decoded (ValueError for a bad prompt or option), for a
        caller that decodes many in one batch (``gptv serve``): add ``.row`` to
        ``new_decoder(.key)``, which rows with equal keys can share. ``sampling``: the options of
        ``decoder.RowOptions``."""
        named = dict(max_new_tokens=max_new_tokens, unknown=unknown, slide=slide)
        sampling = check_arguments({**named, **sampling})  # mc_samples: Prediction checks it
        max_new_tokens, unknown, slide = (sampling.pop(k) for k in named)
        self.prediction.but(method=method, mc_samples=mc_samples).check(self.runs, generation=True)
        ids = self.encode_prompt(prompt, unknown)
        stop, stops = self._stops(stop, stop_at_eot, stop_tokens)
        options = dict(max_new_tokens=max_new_tokens, stop_tokens=stops, details=return_details, **sampling)
        return TokenStream(self, ids, stop, options, DecoderKey(method, mc_samples, use_cache, slide))

    def new_decoder(self, key: DecoderKey, seed: int | None = None) -> Decoder:
        """An empty running batch for rows of ``key`` (``decoder.Decoder``); ``seed`` seeds the
        predictive's own draws (MC dropout), rows have their own."""
        predictor = self.predictor(key.method, key.mc_samples, seed, generation=True)
        return Decoder(predictor, use_cache=key.use_cache, slide=key.slide)

    def token_text(self, token: int) -> str:
        """The text of one token alone (cached: alternatives and sets name the same tokens again and again)."""
        text = self._token_texts.get(token)
        if text is None:
            text = self._token_texts[token] = self.tokenizer.decode([token])
        return text

    def _record(self, g: Generation, k: int, text: str) -> TokenRecord:
        decode = self.token_text
        top = None if g.top is None else [(decode(i), p) for i, p in g.top[k]]
        sets = None if g.sets is None else [decode(i) for i in g.sets[k]]
        return TokenRecord(
            g.tokens[k],
            text,
            g.logprob[k],
            g.entropy[k],
            None if g.mi is None else g.mi[k],
            top,
            sets,
            None if g.draws is None else g.draws[k],
        )

    def _completion(self, prompt: str, ids: list[int], g: Generation, stop: Sequence[str]) -> Completion:
        pieces = self.tokenizer.pieces(ids).all(g.tokens)
        text = "".join(pieces)
        n, reason = len(g.tokens), g.finish_reason
        cuts = [text.find(s) for s in stop if s in text]
        if cuts:  # cut the text at the earliest stop string; keep the tokens that end before it
            cut = min(cuts)
            text, reason = text[:cut], "stop_string"
            while n and sum(map(len, pieces[:n])) > cut:
                n -= 1
        return Completion(
            prompt=prompt, text=text, tokens=[self._record(g, k, pieces[k]) for k in range(n)], finish_reason=reason
        )

    def predictor(
        self,
        method: str | None = None,
        mc_samples: int | None = None,
        seed: int | None = None,
        *,
        generation: bool = False,
    ) -> Predictor:
        """The predictive distribution (``predictive.Predictor``) of the runs under this model's
        ``prediction``, with ``method`` / ``mc_samples`` / ``seed`` replaced where given (ValueError for
        a method these runs cannot serve). ``generation``: for decoding (the method 'sequence' allowed)."""
        prediction = self.prediction.but(method=method, mc_samples=mc_samples, seed=seed)
        return build_predictor(self.runs, prediction, generation=generation)

    def _source(self, sampling: dict[str, Any]) -> tuple[Predictor, dict[str, Any]]:
        """What ``generate`` decodes from, and the rest of the options."""
        sampling = dict(sampling)
        method, samples = sampling.pop("method", None), sampling.pop("mc_samples", None)
        return self.predictor(method, samples, sampling.get("seed"), generation=True), sampling

    @torch.no_grad()
    def score(
        self,
        text: str,
        *,
        method: str | None = None,
        mc_samples: int | None = None,
        seed: int | None = None,
        unknown: str = "error",
        slide: int | None = None,
        top_n: int = 0,
        tau: float = 0.5,
        conformal: float | None = None,
    ) -> list[TokenRecord]:
        """Per-token log p(token | context), predictive entropy (and MI with several draws) of ``text``.

        The end-of-text token is prepended when the tokenizer has one, so every token is scored;
        otherwise the first token has no context and is not scored. Past block_size the
        contexts follow generation's sliding-window policy (``generate.window_start``), so a
        token's score equals its probability at generation time. Probabilities are those of
        ``predictor(method, mc_samples, seed)`` (``mc_samples=0``: a Bayesian head's posterior mean).
        ``top_n``: also the most probable alternatives, each token's probability under every draw,
        and a sigmoid head's set {v : sigmoid(z_v) > tau}. ``conformal``: an alpha fitted by
        ``gptv conformal``; each token gets the size of its LAC set and whether the token is in it.
        """
        return self.score_many(
            [text],
            method=method,
            mc_samples=mc_samples,
            seed=seed,
            unknown=unknown,
            slide=slide,
            top_n=top_n,
            tau=tau,
            conformal=conformal,
        )[0]

    @torch.no_grad()
    def score_many(
        self,
        texts: Sequence[str],
        *,
        method: str | None = None,
        mc_samples: int | None = None,
        seed: int | None = None,
        unknown: str = "error",
        slide: int | None = None,
        top_n: int = 0,
        tau: float = 0.5,
        conformal: float | None = None,
    ) -> list[list[TokenRecord]]:
        """``score`` of several texts in one pass: their windows share forward passes (up to
        SCORE_BATCH windows each), so scoring many short texts costs about what one long one does.
        Each text is scored exactly as alone, except that a Bayesian head's draws (seeded for the
        whole call) then depend on which texts share the call."""
        named = dict(seed=seed, unknown=unknown, slide=slide, top_n=top_n, tau=tau)
        seed, unknown, slide, top_n, tau = check_arguments(named).values()
        predictor = self.predictor(method, mc_samples, seed)
        ids_list = [self._score_ids(t, unknown) for t in texts]
        stream: list[int] = []
        windows: list[tuple[int, int, int]] = []
        pieces: list[str] = []  # the scored tokens' texts, in the windows' order
        for ids in ids_list:
            if len(ids) >= 2:
                off = len(stream)
                windows += [(b + off, e + off, f + off) for b, e, f in generation_windows(len(ids), self.block, slide)]
                pieces += self.tokenizer.pieces(ids[:1]).all(ids[1:])
            stream += ids
        records: list[TokenRecord] = []
        want_sets = top_n > 0 and predictor.sigmoid
        prediction = self.prediction.but(method=method, mc_samples=mc_samples)
        min_p = lac_min_prob(self.runs, prediction, conformal) if conformal is not None else None
        density = predictor.members[0].density
        density = density.to(predictor.device) if density is not None else None
        scored = score_windows(predictor, stream, windows, batch=SCORE_BATCH, set_probs=want_sets, logit_stats=True)
        for _, y, draws in scored:
            if density is not None:
                assert draws.hidden is not None  # score_windows keeps every chunk's hidden states
                draws.logit_stats.update(density.scores(draws.hidden[0]))
            chunk = self._scored(draws, y, pieces, len(records), top_n, tau)
            if min_p is not None:  # the LAC set {v : p_v >= 1 - q} (predict.conformal)
                inside = draws.probs >= min_p
                for r, size, hit in zip(
                    chunk, inside.sum(1).tolist(), inside.gather(1, y[:, None]).squeeze(1).tolist()
                ):
                    r.set_size, r.in_set = size, hit
            records.extend(chunk)
        out, done = [], 0
        for ids in ids_list:
            n = max(0, len(ids) - 1)
            out.append(records[done : done + n])
            done += n
        return out

    @property
    def block(self) -> int:
        return self.model.config.block_size

    def _score_ids(self, text: str, unknown: str) -> list[int]:
        """The ids ``score`` reads: the text's, after end-of-text when the tokenizer has one."""
        if not isinstance(text, str):
            raise WrongType(f"text: expected a str, got {type(text).__name__} {text!r:.40}")
        ids = self.tokenizer.encode(text, unknown=unknown)
        return [self.tokenizer.eot_token] + ids if self.tokenizer.eot_token is not None else ids

    def _scored(
        self, draws: Draws, y: torch.Tensor, pieces: list[str], done: int, top_n: int, tau: float
    ) -> list[TokenRecord]:
        """TokenRecords of one scored chunk of targets y."""
        cols: dict[str, list] = {"lp": draws.logprob(y).tolist(), "h": draws.entropy().tolist()}
        cols["mi"] = draws.mutual_information().tolist() if draws.samples > 1 else [None] * len(y)
        cols["top"] = cols["set"] = cols["draws"] = [None] * len(y)
        per_score = {k: v.tolist() for k, v in draws.logit_stats.items()}
        cols["scores"] = [{k: v[i] for k, v in per_score.items()} for i in range(len(y))]
        decode = self.token_text
        if top_n:
            p, i = draws.probs.topk(min(top_n, draws.log_p.shape[-1]), dim=-1)
            cols["top"] = [[(decode(a), b) for a, b in zip(ii, pp)] for ii, pp in zip(i.tolist(), p.tolist())]
            if draws.set_probs is not None:
                cols["set"] = [[decode(v) for v in torch.nonzero(r > tau).squeeze(1).tolist()] for r in draws.set_probs]
            if draws.samples > 1:
                cols["draws"] = (
                    draws.log_ps.gather(-1, y[None, :, None].expand(draws.samples, -1, 1))
                    .squeeze(-1)
                    .exp()
                    .t()
                    .tolist()
                )
        return [
            TokenRecord(
                t,
                pieces[done + k],
                cols["lp"][k],
                cols["h"][k],
                cols["mi"][k],
                cols["top"][k],
                cols["set"][k],
                cols["draws"][k],
                cols["scores"][k],
            )
            for k, t in enumerate(y.tolist())
        ]

    def __repr__(self) -> str:
        c = self.config
        return (
            f"LanguageModel(variant={c.objective.variant!r}, n_layer={c.model.n_layer}, n_embd={c.model.n_embd}, "
            f"block_size={c.model.block_size}, tokenizer={self.tokenizer.name!r}, device={self.device})"
        )


__all__ = ["Completion", "LanguageModel", "TokenRecord", "load"]
