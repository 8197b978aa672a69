"""``gptv sample``: print samples of a run (text, coloured text, or JSON lines with per-token details).

One plain-text sample is streamed as it is generated; ``--max-new-tokens`` is bounded by
MAX_NEW_TOKENS unless ``--allow-long``. The header (stderr) names the method, draws and the
temperature applied."""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Sequence
from contextlib import closing

from ...common.errors import InputError, UnknownSymbols
from ...predict.conformal import lac_min_prob
from ...predict.prediction import temperature_key
from ..api import Completion, LanguageModel, load
from .parsers.sample import MAX_NEW_TOKENS
from .prediction import describe_prediction, prediction_of

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


def _prompts(args: argparse.Namespace) -> list[str]:
    """--prompt, or the lines of --prompt-file."""
    if args.prompt_file is None:
        return [args.prompt]
    with open(args.prompt_file, encoding="utf-8") as f:
        prompts = [line.rstrip("\r\n") for line in f]
    if not prompts:
        raise InputError(f"{args.prompt_file} holds no prompts")
    return prompts


def cmd_sample(args: argparse.Namespace) -> int:
    """``gptv sample``: print samples (text, or JSON lines with per-token details). One plain-text
    sample is streamed to the terminal token by token as it is generated."""
    if args.max_new_tokens > MAX_NEW_TOKENS and not args.allow_long:
        raise InputError(
            f"--max-new-tokens {args.max_new_tokens:,} is over the bound of {MAX_NEW_TOKENS:,} tokens; "
            "pass --allow-long to generate more (the text is streamed as it is generated)"
        )
    prompts = _prompts(args)
    lm = load(args.ckpt, args.device, prediction=prediction_of(args))
    temperatures = [r.temperature(temperature_key(lm.runs, lm.prediction)) for r in lm.runs]
    header = describe_prediction(lm.prediction, temperatures, lm.config.objective.mc_samples)
    print(f"gptv sample: {header}", file=sys.stderr, flush=True)
    sampling = dict(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        greedy=args.greedy,
        seed=args.seed,
        use_cache=not args.no_cache,
        sig_mode=args.sig_mode,
        tau=args.tau,
        stop_at_eot=not args.ignore_eot,
        unknown=args.unknown,
        conformal_p=lac_min_prob(lm.runs, lm.prediction, args.conformal) if args.conformal else None,
    )
    stops = [_unescape(s) for s in args.stop]
    colour = args.show_uncertainty and (args.color == "always" or (args.color == "auto" and sys.stdout.isatty()))
    batch = [p for p in prompts for _ in range(args.num_samples)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if len(batch) == 1 and not args.json and not args.show_uncertainty:
                _stream_one(lm, batch[0], args.max_new_tokens, stops, sampling)
                results = None
            else:
                results = lm.generate_details(batch, args.max_new_tokens, stop=stops, **sampling)
        except UnknownSymbols as e:
            raise e.hinting("pass --unknown skip") from None
    for msg in dict.fromkeys(str(w.message) for w in caught):  # once per distinct prompt
        print(f"gptv sample: warning: {msg}", file=sys.stderr)
    if results is not None:
        _print_results(args, results if isinstance(results, list) else [results], colour, lm.config.model.vocab_size)
    return 0


def _stream_one(lm: LanguageModel, prompt: str, max_new_tokens: int, stops: list[str], sampling: dict) -> None:
    """Print ``prompt`` and its continuation while it is generated: the same text as
    ``generate_details`` (cut before the first stop string), holding back only the characters
    that could still begin a stop string."""
    out = sys.stdout
    out.write(prompt)
    out.flush()
    hold = max(map(len, stops), default=1) - 1
    text, shown = "", 0
    with closing(lm.stream(prompt, max_new_tokens, **sampling)) as tokens:
        for rec in tokens:
            text += rec.text
            cuts = [text.find(s) for s in stops if s in text]
            if cuts:
                text = text[: min(cuts)]
                break
            if len(text) - hold > shown:
                out.write(text[shown : len(text) - hold])
                out.flush()
                shown = len(text) - hold
    out.write(text[shown:] + "\n")
    out.flush()


def _print_results(args: argparse.Namespace, results: list[Completion], colour: bool, vocab_size: int) -> None:
    """The samples of a batch: JSON lines, or text (coloured by entropy with --show-uncertainty)."""
    if args.show_uncertainty and not colour and not args.json:
        print(
            "gptv sample: --show-uncertainty prints plain text: stdout is not a terminal "
            "(--color always keeps the colours; --json gives the entropies)",
            file=sys.stderr,
        )
    for k, res in enumerate(results):
        records = [t.to_dict() for t in res.tokens]
        if args.json:
            line = {
                "prompt_index": k // args.num_samples,
                "sample": k % args.num_samples,
                "prompt": res.prompt,
                "completion": res.text,
                "finish_reason": res.finish_reason,
                "tokens": records,
            }
            print(json.dumps(line, ensure_ascii=False))
            continue
        if k:
            print("---------------")
        body = colour_by_entropy(records, vocab_size) if colour else res.text
        print(res.prompt + body)
    if colour:
        print("entropy / log V: \033[32m< 0.15\033[0m \033[33m< 0.40\033[0m \033[31m>= 0.40\033[0m", file=sys.stderr)
