"""Peak memory and time of each chunked output-layer loss against its dense computation.

At N = B*T positions and V = 50257 the dense path holds (N, V) logits, their gradient and
the objective's (N, V) intermediates; the fused path (objectives.fused_linear_loss) holds
one chunk. Both run forward + backward from the same h, W, b; values and gradients must
agree (fp32 tolerance) or the script fails.

    python benchmarks/bench_loss.py                  # N = 8192, V = 50257, C = 768
    python benchmarks/bench_loss.py --n 2048 --json
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from bench_step import PeakRSS, release_memory

from gptvariants.core.heads import BayesianHead
from gptvariants.core.objectives import CrossEntropy, SigmoidBCE, SmoothedCrossEntropy, fused_linear_loss


def dense_loss(name: str, z: torch.Tensor, y: torch.Tensor, sets: torch.Tensor | None) -> torch.Tensor:
    """The equations written out densely, as the study (and a naive implementation) computes them."""
    V = z.shape[1]
    if name in ("ce", "bayes"):
        return F.cross_entropy(z, y)
    if name == "smooth":
        q = torch.full_like(z, 0.1 / (V - 1))
        q.scatter_(1, y[:, None], 0.9)
        return -(q * torch.log_softmax(z, -1)).sum(-1).mean()
    t = torch.zeros_like(z)
    t.scatter_(1, sets, 1.0)
    t.scatter_(1, y[:, None], 1.0)
    w = 5.0 if name == "bce-pw" else 1.0
    loss = (w * t * F.softplus(-z) + (1 - t) * F.softplus(z)).sum(-1)
    if name == "bce-reg":
        loss = loss + (torch.sigmoid(z).sum(-1) - 1) ** 2
    return loss.mean()


OBJECTIVES = {
    "ce": CrossEntropy(),
    "smooth": SmoothedCrossEntropy(0.1),
    "bce": SigmoidBCE(),
    "bce-pw": SigmoidBCE(pos_weight=5.0),
    "bce-reg": SigmoidBCE(sum_penalty=1.0),
    "bayes": CrossEntropy(),  # through a Bayesian head's sampled weights
}


def run_one(name: str, mode: str, n: int, c: int, v: int, k: int, device: torch.device):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(n, c, generator=g).to(device).requires_grad_()
    y = torch.randint(v, (n,), generator=g).to(device)
    # distinct ids per row, as a teacher's top-k gives
    sets = (
        torch.stack([torch.randperm(v, generator=g)[:k] for _ in range(min(n, 64))])
        .repeat(n // min(n, 64) + 1, 1)[:n]
        .to(device)
    )
    if name == "bayes":
        torch.manual_seed(0)
        head = BayesianHead(c, v, bias=False).to(device)
        params = [head.weight_mu, head.weight_rho]
    else:
        W = (torch.randn(v, c, generator=g) * 0.02).to(device).requires_grad_()
        b = torch.full((v,), -10.8, device=device).requires_grad_() if name.startswith("bce") else None
        params = [W] + ([b] if b is not None else [])
    release_memory(device)
    base = torch.cuda.memory_allocated(device) if device.type == "cuda" else PeakRSS.current()
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        torch.manual_seed(1)
        Wt, bt = head.weights(sample=True) if name == "bayes" else (params[0], params[1] if len(params) > 1 else None)
        if mode == "dense":
            z = h @ Wt.T + (bt if bt is not None else 0)
            loss = dense_loss(name, z, y, sets)
        else:
            loss = fused_linear_loss(h, Wt, bt, OBJECTIVES[name], y, sets if name.startswith("bce") else None)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        ms = (time.perf_counter() - t0) * 1000
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda" else rss.peak) - base
    grads = [h.grad] + [p.grad for p in params]
    return loss.detach(), grads, peak, ms


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=8192, help="positions B*T")
    p.add_argument("--c", type=int, default=768, help="hidden width")
    p.add_argument("--v", type=int, default=50257)
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--objectives", default=",".join(OBJECTIVES))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    device = torch.device(args.device)
    rows = []
    for name in args.objectives.split(","):
        fused = run_one(name, "fused", args.n, args.c, args.v, args.k, device)
        dense = run_one(name, "dense", args.n, args.c, args.v, args.k, device)
        torch.testing.assert_close(fused[0], dense[0], rtol=1e-4, atol=1e-5)
        for a, b in zip(fused[1], dense[1]):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)
        rows.append(
            {
                "objective": name,
                "n": args.n,
                "vocab": args.v,
                "n_embd": args.c,
                "dense_peak_mb": round(dense[2] / 2**20),
                "fused_peak_mb": round(fused[2] / 2**20),
                "memory_reduction": round(dense[2] / max(fused[2], 1), 2),
                "dense_ms": round(dense[3]),
                "fused_ms": round(fused[3]),
                "values_and_grads_equal": True,
            }
        )
        del fused, dense
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"N = {args.n}, V = {args.v}, C = {args.c}, K = {args.k}, device {device}, torch {torch.__version__}")
    print(
        "| objective | dense peak MiB | fused peak MiB | reduction | dense ms | fused ms | equal |\n"
        "|---|---|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['objective']} | {r['dense_peak_mb']} | {r['fused_peak_mb']} | {r['memory_reduction']:.1f}x | "
            f"{r['dense_ms']} | {r['fused_ms']} | yes |"
        )


if __name__ == "__main__":
    main()
