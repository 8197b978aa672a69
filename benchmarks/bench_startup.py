"""Start-up of ``gptv``: wall time of ``--help`` and argument errors, this tree against a baseline (issue 21).

Each command is ``python -m gptvariants ARGS`` in a fresh process with ``OMP_NUM_THREADS=1``,
once with this tree's ``src`` first on PYTHONPATH and once with the baseline's (a git revision,
extracted with ``git archive``), alternating, ``--repeats`` times each; reported is the best
(minimum) wall time of each, since start-up on a shared machine only ever gets slower. Also
reported: whether the process imported torch (``-X importtime``, one extra run each).

    python benchmarks/bench_startup.py                        # baseline 8e0c692 (before issue 21)
    python benchmarks/bench_startup.py --baseline HEAD~3 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {  # label -> gptv arguments (and the targets of issue 21)
    "gptv --help": ["--help"],
    "gptv train --bad_key=1": ["train", "--bad_key=1"],
    "gptv sample --help": ["sample", "--help"],
    "gptv sample --ckpt R --top-k x": ["sample", "--ckpt", "R", "--top-k", "x"],
    "gptv eval --help": ["eval", "--help"],
    "gptv train --help-config": ["train", "--help-config"],
}
TARGETS = {"gptv --help": "< 0.3 s", "gptv train --bad_key=1": "< 0.5 s"}


def extract(revision: str, into: Path) -> Path:
    """The baseline's ``src`` folder, from ``git archive REVISION src``."""
    archive = into / "src.tar"
    with archive.open("wb") as out:
        subprocess.run(["git", "-C", str(ROOT), "archive", revision, "src"], stdout=out, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def run(src: Path, argv: list[str], importtime: bool = False) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    flags = ["-X", "importtime"] if importtime else []
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *flags, "-m", "gptvariants", *argv], env=env, capture_output=True, text=True, cwd=src
    )
    return time.perf_counter() - start, done


def imports_torch(src: Path, argv: list[str]) -> bool:
    _, done = run(src, argv, importtime=True)
    return any(line.split("|")[-1].strip() == "torch" for line in done.stderr.splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--baseline", default="8e0c692", help="git revision to compare against (default: before issue 21)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command per tree; the best is reported")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        trees = {"baseline": extract(args.baseline, Path(tmp)), "this tree": ROOT / "src"}
        print(
            f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
            f"best of {args.repeats}, OMP_NUM_THREADS=1; baseline {args.baseline}\n"
        )
        print("| command | baseline (s) | this tree (s) | speed-up | torch imported (baseline / now) | target |")
        print("|---|---:|---:|---:|---|---|")
        for label, argv in COMMANDS.items():
            best = {name: float("inf") for name in trees}
            codes = {}
            for _ in range(args.repeats):
                for name, src in trees.items():
                    seconds, done = run(src, argv)
                    best[name] = min(best[name], seconds)
                    codes[name] = done.returncode
            if codes["baseline"] != codes["this tree"]:
                sys.exit(f"{label}: exit code {codes['baseline']} before, {codes['this tree']} now")
            torch = " / ".join("yes" if imports_torch(src, argv) else "no" for src in trees.values())
            base, now = best["baseline"], best["this tree"]
            print(f"| `{label}` | {base:.3f} | {now:.3f} | {base / now:.1f}x | {torch} | {TARGETS.get(label, '')} |")


if __name__ == "__main__":
    main()
