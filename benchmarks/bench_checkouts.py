"""Two source trees of gptvariants side by side: training step time, evaluation time and generation speed.

A refactor must not cost speed. This runs the same commands through each tree's command line
(``PYTHONPATH=TREE/src python -m MODULE ...``), alternating the trees within every round and
their order between rounds, so that drift in machine load hits both alike. Per round and
variant it records:

    ms/step      the median of the training log's ms_per_step (``gptv train``, ``--steps`` steps)
    eval s       ``gptv eval``'s scoring time of the validation split (speed.scoring_seconds)
    gen tok/s    ``gptv eval``'s sampling speed (speed.generation_tokens_per_s; 100 samples of 64 tokens)

and reports each tree's median over rounds and the ratio second/first as the median over
rounds of the per-round ratio, with its range. The runs to retrain and evaluate are those of an
experiment folder (their config.json is reused, so shapes, data and teacher sets are the
experiment's); evaluation scores the experiment's own runs with both trees.

    python benchmarks/bench_checkouts.py --experiment runs/experiment \\
        --tree before=../before:gptvariants.cli --tree after=.:gptvariants --rounds 3 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def parse_tree(spec: str) -> tuple[str, Path, str]:
    """LABEL=DIR[:MODULE] -> (label, DIR/src, module run with -m); MODULE defaults to gptvariants."""
    label, _, rest = spec.partition("=")
    folder, _, module = rest.partition(":")
    src = Path(folder).resolve() / "src"
    if not label or not (src / "gptvariants").is_dir():
        raise SystemExit(f"--tree {spec!r}: expected LABEL=DIR[:MODULE] with DIR/src/gptvariants")
    return label, src, module or "gptvariants"


def run(tree: tuple[str, Path, str], args: list[str], threads: int) -> None:
    _, src, module = tree
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([sys.executable, "-m", module, *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{tree[0]}: {' '.join(args)} failed:\n{done.stderr[-2000:]}")


def train_ms(tree, run_dir: Path, out: Path, steps: int, threads: int) -> float:
    run(
        tree,
        [
            "train",
            "--config",
            str(run_dir / "config.json"),
            "--out",
            str(out),
            f"--max_iters={steps}",
            f"--eval_interval={steps}",
            "--eval_iters=1",
            "--log_interval=5",
            "--tensorboard=false",
            "--progress=lines",
        ],
        threads,
    )
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return statistics.median(r["ms_per_step"] for r in records if r.get("kind") == "train" and "ms_per_step" in r)


def eval_speed(tree, run_dir: Path, data: str, out: Path, threads: int) -> tuple[float, float]:
    run(
        tree,
        ["eval", "--ckpt", str(run_dir), "--data", data, "--num-samples", "100", "--out", str(out), "--device", "cpu"],
        threads,
    )
    speed = json.loads(out.read_text())["speed"]
    return speed["scoring_seconds"], speed["generation_tokens_per_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiment", required=True, help="an experiment folder (gptv experiment --out)")
    p.add_argument("--tree", action="append", required=True, help="LABEL=DIR[:MODULE], twice")
    p.add_argument("--variants", default="baseline,bayes,sig")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the per-round figures here")
    a = p.parse_args()
    trees = [parse_tree(t) for t in a.tree]
    if len(trees) != 2:
        raise SystemExit("give exactly two --tree")
    exp = Path(a.experiment)
    data = json.loads((exp / "plan.json").read_text())["data"]
    figures: dict[str, dict[str, dict[str, list[float]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            order = trees if r % 2 == 0 else trees[::-1]
            for v in a.variants.split(","):
                for tree in order:
                    label = tree[0]
                    scratch = Path(tmp) / f"{label}-{v}-{r}"
                    ms = train_ms(tree, exp / "runs" / v, scratch / "run", a.steps, a.threads)
                    secs, gen = eval_speed(tree, exp / "runs" / v, data, scratch / "eval.json", a.threads)
                    row = figures.setdefault(v, {}).setdefault(label, {"ms/step": [], "eval s": [], "gen tok/s": []})
                    row["ms/step"].append(ms)
                    row["eval s"].append(secs)
                    row["gen tok/s"].append(gen)
                    print(
                        f"round {r} {v} {label}: {ms:.1f} ms/step, eval {secs:.2f} s, {gen:,.0f} gen tok/s", flush=True
                    )
    first, second = trees[0][0], trees[1][0]
    print(f"\n| variant | measure | {first} | {second} | {second}/{first} (median, range) |\n|---|---|---|---|---|")
    for v, by_tree in figures.items():
        for m in ("ms/step", "eval s", "gen tok/s"):
            x, y = by_tree[first][m], by_tree[second][m]
            ratios = [b / a_ for a_, b in zip(x, y)]
            print(
                f"| {v} | {m} | {statistics.median(x):.2f} | {statistics.median(y):.2f} | "
                f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) |"
            )
    if a.json:
        Path(a.json).write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
