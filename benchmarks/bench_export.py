"""Export cost and exactness at GPT-2's shape: `gptv export` time, load time, and the largest logit difference.

For each variant a random-weight model of GPT-2 small's shape (12 layers, 12 heads, 768 wide,
block_size 1024, vocabulary 50257; no training needed: the mapping does not depend on the
weights) is saved as a run (one checkpoint, a char tokenizer over the first ids, so the
vocabulary is padded past the tokenizer), exported with ``export()``, and loaded back with
``AutoModelForCausalLM.from_pretrained`` offline. On ``--batch`` x ``--tokens`` random ids in
float32 the table gives max |HF logits - gptv logits| (plain GPT-2 folders: raw logits; shipped
modeling code: log_softmax of the HF logits against the run's predictive log-probabilities),
the export time beside the time ``load_run`` alone takes (export includes it), and the folder's size.

    python benchmarks/bench_export.py [--variants baseline,bayes,sig] [--tokens 256] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from gptvariants.apps.export import export
from gptvariants.core.config import load_config
from gptvariants.core.model import GPT
from gptvariants.data.tokenizers import CharTokenizer
from gptvariants.store.checkpoint import load_run, save_checkpoint


def make_run(variant: str, root: Path, args) -> Path:
    shape = dict(size="gpt2", block_size=args.block_size, vocab_size=args.vocab, bias=True)
    cfg = load_config(variant, overrides=shape)
    torch.manual_seed(0)
    model = GPT(cfg.model, cfg.objective)
    with torch.no_grad():  # move the LayerNorms and biases off their (1, 0) start so a mapping error would show
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.normal_(1.0 if name.endswith("weight") and ".ln" in name else 0.0, 0.1)
    run = root / f"run-{variant}"
    save_checkpoint(run, model, {"step": 0, "config": cfg.to_dict()})
    CharTokenizer([chr(c) for c in range(32, 127)]).save(run)
    return run


def measure(variant: str, root: Path, args) -> dict:
    from transformers import AutoModelForCausalLM

    run = make_run(variant, root, args)
    t0 = time.perf_counter()
    model, _ = load_run(run)
    t_load = time.perf_counter() - t0
    del model
    out = root / f"hf-{variant}"
    t0 = time.perf_counter()
    export(run, out)
    t_export = time.perf_counter() - t0
    t0 = time.perf_counter()
    hf = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    t_hf = time.perf_counter() - t0
    model, cfg = load_run(run)
    x = torch.randint(0, args.vocab, (args.batch, args.tokens), generator=torch.Generator().manual_seed(1))
    plain = not (out / "modeling_gptvariants.py").exists()
    with torch.no_grad():
        z = model.logits(model.transformer(x))
        theirs = hf(x).logits.float()
        diff = (theirs - z) if plain else (torch.log_softmax(theirs, -1) - model.objective.log_probs(z))
    size = sum(f.stat().st_size for f in out.iterdir())
    return {
        "variant": variant,
        "folder": "GPT2LMHeadModel" if plain else "modeling code",
        "load_run_s": round(t_load, 2),
        "export_s": round(t_export, 2),
        "hf_load_s": round(t_hf, 2),
        "max_abs_diff": float(diff.abs().max()),
        "size_mib": round(size / 2**20),
        "params_m": round(model.num_params(non_embedding=False) / 1e6, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="baseline,bayes,sig")
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--block-size", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants.split(","):
            rows.append(measure(variant, Path(tmp), args))
            for f in Path(tmp).iterdir():  # keep one variant's files on disk at a time
                shutil.rmtree(f)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print("| variant | folder | params (M) | export s | load_run alone s | HF load s | size MiB | max abs logit diff |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['folder']} | {r['params_m']} | {r['export_s']} | {r['load_run_s']} "
            f"| {r['hf_load_s']} | {r['size_mib']} | {r['max_abs_diff']:.1e} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
