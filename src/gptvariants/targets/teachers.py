"""The teachers behind ``ckpt:RUN``, ``hf:NAME_OR_PATH`` and ``oracle`` (``ngram:N`` is in ngram.py), and
``load_teacher``."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..common.errors import InputError, UnavailableError
from ..common.inputs import read_json
from ..data.dataset import TokenDataset
from ..predict.methods import Run
from ..predict.prediction import Prediction, build_predictor
from ..store.checkpoint import load_run
from ..store.run import check_run_files
from .base import ALTERNATIVES, TOKENS_PER_FORWARD, Teacher, WindowedTeacher, parse_spec
from .ngram import NgramTeacher


class CheckpointTeacher(WindowedTeacher):
    """``ckpt:RUN``: a gptvariants run; its predictive distribution (``predictive.Predictor``: softmax, a
    sigmoid head's readout, a Bayesian head's mixture of draws, its fitted temperature)."""

    def __init__(
        self, run: str, data: TokenDataset, device: torch.device, context: int | None, batch_size: int
    ) -> None:

        run_dir = Path(run)
        check_run_files(run_dir)
        info_path = run_dir / "data.json"
        if info_path.is_file():
            info = read_json(info_path)
            for key in ("tokenizer", "vocab_size"):
                if info.get(key) != data.meta.get(key):
                    raise InputError(
                        f"teacher ckpt:{run} was trained on data with {key} {info.get(key)!r}, this data has "
                        f"{data.meta.get(key)!r}"
                    )
        self.model, cfg = load_run(run_dir, device)
        if cfg.model.vocab_size < data.vocab_size:
            raise InputError(f"teacher ckpt:{run} has vocab_size {cfg.model.vocab_size}, the data {data.vocab_size}")
        self.spec, self.device, self.vocab_size = f"ckpt:{run}", device, data.vocab_size
        self.context = min(context or cfg.model.block_size, cfg.model.block_size)
        self.batch_size = batch_size or max(1, TOKENS_PER_FORWARD // self.context)
        self.variant = cfg.objective.variant

        self.predictor = build_predictor([Run(run_dir, self.model, cfg)], Prediction(seed=0))

    def _autocast(self):
        return (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.device.type == "cuda"
            else torch.autocast("cpu", enabled=False)
        )

    def hidden(self, windows: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.model.transformer(windows)

    def probs_from_hidden(self, h: torch.Tensor) -> torch.Tensor:
        p = self.predictor.draws([h]).probs[:, : self.vocab_size]  # a padded vocabulary's ids never occur in the data
        return p / p.sum(-1, keepdim=True) if p.shape[-1] < self.predictor.vocab_size else p

    def softmax_logits(self, h: torch.Tensor) -> torch.Tensor | None:
        """The logits when the predictive is one softmax draw (the ranking fast path), else None."""
        if self.predictor.n_draws > 1 or self.model.objective.sigmoid:
            return None
        return self.predictor.members[0].logits(h, 0, None)[0, :, : self.vocab_size]  # z / T, no (m, V) exp

    def info(self) -> dict[str, Any]:
        return {**super().info(), "context": self.context, "variant": self.variant}


class HFTeacher(WindowedTeacher):
    """``hf:NAME_OR_PATH``: a transformers causal LM; softmax of its output layer on the base model's hidden states."""

    def __init__(
        self, name: str, data: TokenDataset, device: torch.device, context: int | None, batch_size: int
    ) -> None:
        try:
            from transformers import AutoModelForCausalLM
        except ImportError:
            raise UnavailableError(
                "hf: teachers need transformers: pip install 'gptvariants[hf]' (or use ckpt:RUN or ngram:N)"
            ) from None

        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false") or os.environ.get(
            "TRANSFORMERS_OFFLINE", "0"
        ) not in ("0", "", "false")
        try:
            try:  # the cache first: no network round-trips when the model is already here
                model = AutoModelForCausalLM.from_pretrained(name, local_files_only=True)
            except OSError:
                if offline or Path(name).exists():
                    raise
                model = AutoModelForCausalLM.from_pretrained(name)
        except OSError as e:
            raise UnavailableError(
                f"cannot load the Hugging Face model {name!r} (not cached and not downloadable: "
                f"{str(e).splitlines()[0]}); {ALTERNATIVES}"
            ) from e
        V = int(model.config.vocab_size)
        if V != data.vocab_size:
            raise InputError(
                f"teacher hf:{name} has a vocabulary of {V} tokens, the data {data.vocab_size} "
                f"({data.meta['tokenizer']}); {ALTERNATIVES}"
            )
        self._check_tokenizer(name, data)
        self.model = model.to(device).eval()  # type: ignore[arg-type]  # transformers' wrapped .to()
        self.spec, self.device, self.vocab_size = f"hf:{name}", device, V
        n_pos = (
            getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None) or 1024
        )
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
            raise InputError(
                f"teacher hf:{name} tokenizes the data differently from {data.meta['tokenizer']!r} (first "
                f"difference at token {i}); {ALTERNATIVES}"
            )

    def hidden(self, windows: torch.Tensor) -> torch.Tensor:
        return self.model.base_model(input_ids=windows).last_hidden_state

    def probs_from_hidden(self, h: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.head(h).float(), dim=-1)

    def softmax_logits(self, h: torch.Tensor) -> torch.Tensor | None:
        return self.head(h).float()

    def info(self) -> dict[str, Any]:
        return {**super().info(), "context": self.context}


class OracleTeacher(Teacher):
    """``oracle``: the synthetic language's exact p(x_{t+1} | x_<=t) (HMM forward algorithm)."""

    def __init__(self, data: TokenDataset, device: torch.device) -> None:
        lang = data.synthetic
        if lang is None:
            raise InputError(
                f"the oracle teacher needs the synthetic language; {data.dir} holds {data.meta['source']!r}. "
                f"{ALTERNATIVES}"
            )
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


def load_teacher(
    spec: str, data: TokenDataset, device: torch.device, *, context: int | None = None, batch_size: int = 0
) -> Teacher:
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
            raise InputError(f"ngram teacher needs an order, e.g. ngram:3, not {spec!r}") from None
        t = NgramTeacher(n, data, device)
    elif kind == "oracle" and not arg:
        t = OracleTeacher(data, device)
    else:
        raise InputError(f"unknown teacher {spec!r}; expected hf:NAME_OR_PATH, ckpt:RUN, ngram:N or oracle")
    if t.vocab_size != data.vocab_size:
        raise InputError(f"teacher {spec!r} has {t.vocab_size} tokens, the data {data.vocab_size}")
    return t
