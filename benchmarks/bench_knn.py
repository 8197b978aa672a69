"""The kNN part of the feature density (issue 19): ``FeatureDensity.knn`` (a matrix product with the
bank and torch's top-k) against its product alone and against faiss-cpu's exact ``IndexFlatIP``
search, when faiss is installed. One thread each, the least of ``--repeats``; the k-th distances
must agree.

    python benchmarks/bench_knn.py [--rows 20000] [--bank 2048] [--width 128] [--k 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from gptvariants.predict.density import FeatureDensity


def best(fn: Callable[[], torch.Tensor], repeats: int) -> tuple[float, torch.Tensor]:
    times, out = [], torch.empty(0)
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--bank", type=int, default=2048)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    bank = F.normalize(torch.randn(a.bank, a.width, generator=g), dim=1)
    h = torch.randn(a.rows, a.width, generator=g)
    zeros = torch.zeros(1, a.width, dtype=torch.float64)
    density = FeatureDensity(zeros, torch.eye(a.width, dtype=torch.float64), zeros[0], zeros.T @ zeros, bank, a.k)
    u = F.normalize(h, dim=1)
    rows = {"FeatureDensity.knn (product + top-k)": best(lambda: density.knn(h), a.repeats)}
    rows["the bank product alone"] = best(lambda: u @ bank.T, a.repeats)
    try:
        import faiss  # optional: only to compare with
    except ImportError:
        faiss = None
    if faiss is not None:
        faiss.omp_set_num_threads(1)
        index = faiss.IndexFlatIP(a.width)
        index.add(bank.numpy())
        search = lambda: (2 - 2 * torch.from_numpy(index.search(u.numpy(), a.k)[0][:, -1])).clamp_min(0).sqrt()  # noqa: E731
        rows["faiss IndexFlatIP search"] = best(search, a.repeats)
    ref = rows["FeatureDensity.knn (product + top-k)"][1]
    print(f"{a.rows:,} rows x bank {a.bank:,} x width {a.width}, k {a.k}, one thread, least of {a.repeats}\n")
    print("| method | seconds | max abs difference of the k-th distance |\n|---|---:|---:|")
    for name, (sec, out) in rows.items():
        diff = "-" if out.shape != ref.shape else f"{(out - ref).abs().max().item():.1e}"
        print(f"| {name} | {sec:.3f} | {diff} |")


if __name__ == "__main__":
    main()
