"""Split conformal next-token sets for any head and method, and the `gptv conformal` fit.

A conformity score s(x, v) ranks the tokens of the predictive distribution p = p(. | x) (the ONE
distribution of a run, ``Predictor.draws``); on n calibration positions with true tokens y_i

    q = the ceil((n + 1)(1 - alpha))-th smallest of s(x_i, y_i)   (+inf when that exceeds n)
    C(x) = {v : s(x, v) <= q}

contains the true next token with probability >= 1 - alpha on exchangeable data (Vovk et al.
2005; Angelopoulos & Bates 2021). Scores (``SCORES``), with r(v) the 1-based rank of v under p,
M(v) = sum of the p_u ranked before v, and u ~ U(0, 1) per position:

    lac        1 - p_v                                   (Sadinle et al. 2019: smallest sets on average)
    aps        M(v) + p_v                                (Romano et al. 2020)
    aps-rand   M(v) + u p_v
    raps       M(v) + p_v   + lambda max(0, r(v) - k_reg) (Angelopoulos et al. 2021)
    raps-rand  M(v) + u p_v + lambda max(0, r(v) - k_reg)
    sig        1 - s_v, s_v = mean_s sigmoid(z_s)_v       (sigmoid heads: the threshold on s(z))

RAPS' k_reg (the (1 - alpha) conformal quantile of r(y)) and lambda (of ``LAMBDAS``, the smallest
mean set) are chosen on a tuning slice of the calibration tokens, disjoint from those that fit q.
An entmax head's own support {v : p_v > 0} is a set too (``SUPPORT``): it has no threshold.

Held-out tokens are split as ``gptv calibrate`` splits them: the first half calibrates, the second
checks (coverage, set sizes, coverage by set size and by entropy bin); ``--ood`` checks the same
thresholds on shifted text, where exchangeability, and so the guarantee, no longer holds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import metrics as M
from ..common.atomic import atomic_write
from ..common.errors import InputError
from ..core.objectives import EntmaxLoss
from ..store.run import CONFORMAL_FILE
from .methods import POINT, Default, Run
from .options import ALPHAS
from .prediction import Prediction, build_predictor, temperature_key
from .predictive import CHUNK_FLOATS, Draws, Predictor, score_windows

LAMBDAS = (0.0, 0.001, 0.01, 0.05, 0.1, 0.2, 0.5)  # RAPS' lambda grid (Angelopoulos et al.'s range)
TUNE_FRACTION = 0.3  # of the calibration tokens, for RAPS' k_reg and lambda
SIZE_BINS = (1, 2, 4, 11, 101, 1001)  # lower edges of the size strata: 1, 2-3, 4-10, 11-100, 101-1000, 1001+
ENTROPY_BINS = 5  # equal-count bins of the predictive entropy
MIN_STRATUM = 20  # positions a stratum needs to count towards the worst stratified coverage
SUPPORT = "support"
SORTED_SCORES = ("aps", "aps-rand", "raps", "raps-rand")
SCORES = ("lac", *SORTED_SCORES, "sig")


class Chunk:
    """One chunk of the predictive distribution, sorted once for every score: p (n, V), p sorted in
    descending order and its cumulative sum, each token's 0-based rank, the draws themselves (a
    sigmoid head's set probabilities), the targets y (n,) and the uniform u (n,) of the randomised scores."""

    def __init__(self, draws: Draws, y: torch.Tensor, u: torch.Tensor) -> None:
        self.draws, self.y, self.u = draws, y, u
        self.p = draws.probs
        self.sorted, order = self.p.sort(dim=1, descending=True, stable=True)
        self.cum = self.sorted.cumsum(1)
        ranks = torch.arange(self.p.shape[1], device=self.p.device).expand_as(order)
        self.rank = torch.empty_like(order).scatter_(1, order, ranks)


@dataclass(frozen=True)
class SetRule:
    """C(x) = {v : s(x, v) <= q} for the conformity score ``score`` (module docstring)."""

    score: str
    q: float = math.inf
    k_reg: int = 0
    lam: float = 0.0

    def table(self, c: Chunk) -> torch.Tensor:
        """s(x, v) (n, V): in token order for lac and sig, in rank order for the APS family."""
        if self.score == "lac":
            return 1 - c.p
        if self.score == "sig":
            if c.draws.set_probs is None:
                raise InputError("the sig score needs a sigmoid head's set probabilities")
            return 1 - c.draws.set_probs
        s = c.cum - (1 - c.u[:, None]) * c.sorted if self.score.endswith("-rand") else c.cum
        if self.score.startswith("raps") and self.lam > 0:
            ranks = torch.arange(1, s.shape[1] + 1, device=s.device, dtype=s.dtype)
            s = s + self.lam * (ranks - self.k_reg).clamp_min(0)
        return s

    def true_scores(self, c: Chunk, y: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """s(x, y) (n,) of the true tokens y (n,)."""
        t = self.table(c) if table is None else table
        col = c.rank.gather(1, y[:, None]) if self.score in SORTED_SCORES else y[:, None]
        return t.gather(1, col).squeeze(1)

    def members(self, c: Chunk) -> torch.Tensor:
        """C(x) as a mask (n, V) in token order."""
        inside = self.table(c) <= self.q
        return inside.gather(1, c.rank) if self.score in SORTED_SCORES else inside


def conformal_quantile(scores: np.ndarray, alpha: float) -> float:
    """The ceil((n + 1)(1 - alpha))-th smallest score; +inf when there are too few to promise 1 - alpha."""
    n = len(scores)
    k = math.ceil((n + 1) * (1 - alpha))
    return math.inf if k > n else float(np.partition(np.asarray(scores, dtype=np.float64), k - 1)[k - 1])


Encoded = list[tuple[list[torch.Tensor], torch.Tensor]]  # (hidden states per backbone pass, targets) per chunk
BUDGET = CHUNK_FLOATS // 6  # a chunk holds about six (n, V) arrays: p, sorted, cumsum, ranks, a score table, a mask


def _windows(predictor: Predictor, tokens: np.ndarray) -> list[tuple[int, int, int]]:
    return M.sliding_windows(len(tokens), predictor.block_size, max(1, predictor.block_size // 2))


def encode(predictor: Predictor, tokens: np.ndarray) -> Encoded:
    """The hidden states and targets of one pass over ``tokens``: for passes that read them out again."""
    out = []
    for _, y, draws in score_windows(predictor, tokens, _windows(predictor, tokens), budget=BUDGET):
        assert draws.hidden is not None  # score_windows keeps the hidden states it read out
        out.append((draws.hidden, y))
    return out


def chunks(predictor: Predictor, tokens: np.ndarray | Encoded, seed: int) -> Iterator[Chunk]:
    """The chunks of one pass over ``tokens`` (or over their ``encode``d hidden states), reproducible
    by ``seed``: the head's draws and the randomised scores' u restart from it on every pass."""
    predictor.generator.manual_seed(seed)
    uniforms = torch.Generator().manual_seed(seed + 1)
    if isinstance(tokens, list):
        with predictor.fixed_weights():
            for hs, y in tokens:
                draws = predictor.draws(hs, set_probs=predictor.sigmoid)
                yield Chunk(draws, y, torch.rand(len(y), generator=uniforms).to(y.device))
        return
    windows = _windows(predictor, tokens)
    for _, y, draws in score_windows(predictor, tokens, windows, set_probs=predictor.sigmoid, budget=BUDGET):
        yield Chunk(draws, y, torch.rand(len(y), generator=uniforms).to(y.device))


def scores_of(predictor: Predictor) -> list[str]:
    """The scores that apply to ``predictor``'s distribution (sig: sigmoid heads only)."""
    return [s for s in SCORES if s != "sig" or predictor.sigmoid]


def has_support(predictor: Predictor) -> bool:
    """Whether the predictive is a single sparse draw whose support is a set (an entmax head's point estimate)."""
    return len(predictor.members) == 1 and predictor.n_draws == 1 and isinstance(predictor.model.objective, EntmaxLoss)


# ----------------------------------------------------------------------------- fitting


def tune_raps(
    predictor: Predictor, tokens: np.ndarray, alphas: Sequence[float], seed: int
) -> dict[float, tuple[int, float]]:
    """(k_reg, lambda) of RAPS at each alpha on ``tokens`` (Angelopoulos et al. 2021, section 4): k_reg
    the conformal (1 - alpha) quantile of the true tokens' ranks; lambda the one of ``LAMBDAS``
    whose own conformal sets on these tokens are smallest on average. Three readouts of one pass."""
    cache = encode(predictor, tokens)
    ranks = np.concatenate(
        [(c.rank.gather(1, c.y[:, None]).squeeze(1) + 1).cpu().numpy() for c in chunks(predictor, cache, seed)]
    )
    rules = []
    for a in alphas:
        q_rank = conformal_quantile(ranks, a)
        k_reg = int(q_rank) if math.isfinite(q_rank) else predictor.vocab_size
        rules += [(a, SetRule("raps-rand", k_reg=k_reg, lam=lam)) for lam in LAMBDAS]
    scores: list[list[np.ndarray]] = [[] for _ in rules]
    for c in chunks(predictor, cache, seed):
        for (_, r), out in zip(rules, scores):
            out.append(r.true_scores(c, c.y).cpu().numpy())
    fitted = [
        (a, SetRule(r.score, conformal_quantile(np.concatenate(s), a), r.k_reg, r.lam))
        for (a, r), s in zip(rules, scores)
    ]
    sizes = np.zeros(len(fitted))
    for c in chunks(predictor, cache, seed):
        for i, (_, r) in enumerate(fitted):
            sizes[i] += float((r.table(c) <= r.q).sum())
    best = {}
    for a in alphas:
        i = min((i for i, (b, _) in enumerate(fitted) if b == a), key=lambda i: sizes[i])
        best[a] = (fitted[i][1].k_reg, fitted[i][1].lam)
    return best


def fit_rules(predictor: Predictor, tokens: np.ndarray, alphas: Sequence[float], seed: int = 0) -> dict[str, SetRule]:
    """The fitted rules ``"SCORE@ALPHA"`` of every score and alpha, on calibration ``tokens``: RAPS
    tuned on their first ``TUNE_FRACTION``, every q fitted on the rest (one pass)."""
    n_tune = max(predictor.block_size + 1, int(len(tokens) * TUNE_FRACTION))
    if len(tokens) - n_tune < predictor.block_size + 1:
        raise InputError(
            f"{len(tokens)} calibration tokens are too few to tune RAPS and fit thresholds "
            f"(at least 2 x (block_size + 1) = {2 * (predictor.block_size + 1)})"
        )
    tune, fit = tokens[:n_tune], tokens[n_tune:]
    rules = {}
    tuned = tune_raps(predictor, tune, alphas, seed)
    for a in alphas:
        k_reg, lam = tuned[a]
        for s in scores_of(predictor):
            rules[f"{s}@{a:g}"] = SetRule(s, k_reg=k_reg, lam=lam) if s.startswith("raps") else SetRule(s)
    scores: dict[str, list[np.ndarray]] = {k: [] for k in rules}
    for c in chunks(predictor, fit, seed):
        by_score: dict[tuple, torch.Tensor] = {}  # the rules of one score at several alphas share a table
        for name, r in rules.items():
            key = (r.score, r.k_reg, r.lam)
            if key not in by_score:
                by_score[key] = r.true_scores(c, c.y)
            scores[name].append(by_score[key].cpu().numpy())
    alpha_of = {k: float(k.split("@")[1]) for k in rules}
    return {
        k: SetRule(r.score, conformal_quantile(np.concatenate(scores[k]), alpha_of[k]), r.k_reg, r.lam)
        for k, r in rules.items()
    }


# ----------------------------------------------------------------------------- evaluation

OnChunk = Callable[[Chunk, dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def evaluate_rules(
    predictor: Predictor,
    tokens: np.ndarray,
    rules: dict[str, SetRule],
    seed: int = 0,
    on_chunk: OnChunk | None = None,
) -> dict[str, np.ndarray]:
    """Per-token columns of one pass over ``tokens``: ``NAME/covered`` and ``NAME/size`` of every rule
    (and of the support, ``has_support``), ``entropy``, and what ``on_chunk(chunk, masks)`` returns
    for each chunk given the rules' sets as masks (n, V) (then computed for it)."""
    support = has_support(predictor)
    cols: dict[str, list[torch.Tensor]] = {}

    def put(name: str, value: torch.Tensor) -> None:
        cols.setdefault(name, []).append(value.cpu())

    for c in chunks(predictor, tokens, seed):
        y = c.y
        masks = {name: r.members(c) for name, r in rules.items()}
        if support:
            assert c.draws.scores is not None  # a single draw's sampling scores: log of the sparse p
            masks[SUPPORT] = torch.isfinite(c.draws.scores)
        for name, m in masks.items():
            put(f"{name}/covered", m.gather(1, y[:, None]).squeeze(1))
            put(f"{name}/size", m.sum(1))
        put("entropy", c.draws.entropy())
        for name, value in (on_chunk(c, masks) if on_chunk else {}).items():
            put(name, value)
    return {k: torch.cat(v).numpy() for k, v in cols.items()}


def stratified(covered: np.ndarray, key: np.ndarray, edges: Sequence[float]) -> list[dict[str, Any]]:
    """Coverage of the positions whose ``key`` falls in [edges[i], edges[i+1]) (the last bin open)."""
    out = []
    bins = np.searchsorted(np.asarray(edges, dtype=np.float64), key, side="right") - 1
    for i, lo in enumerate(edges):
        inside = bins == i
        if inside.any():
            hi = edges[i + 1] if i + 1 < len(edges) else math.inf
            out.append(
                {"from": float(lo), "to": hi, "count": int(inside.sum()), "coverage": float(covered[inside].mean())}
            )
    return out


def summary(cols: dict[str, np.ndarray], name: str) -> dict[str, Any]:
    """Coverage, set sizes and conditional coverage of the rule ``name`` (``evaluate_rules`` columns)."""
    covered, size = cols[f"{name}/covered"].astype(np.float64), cols[f"{name}/size"].astype(np.float64)
    by_size = stratified(covered, size, SIZE_BINS)
    edges = np.quantile(cols["entropy"], np.linspace(0, 1, ENTROPY_BINS + 1)[:-1])
    by_entropy = stratified(covered, cols["entropy"], np.unique(edges).tolist())
    counted = [b["coverage"] for b in by_size if b["count"] >= MIN_STRATUM]
    return {
        "coverage": float(covered.mean()),
        "mean_size": float(size.mean()),
        "median_size": float(np.median(size)),
        "worst_size_stratum_coverage": min(counted) if counted else float("nan"),
        "by_size": by_size,
        "by_entropy": by_entropy,
        "tokens": len(covered),
    }


def rules_to_json(rules: dict[str, SetRule]) -> dict[str, dict[str, Any]]:
    return {k: {**asdict(r), "q": r.q if math.isfinite(r.q) else None} for k, r in rules.items()}


def rules_from_json(d: dict[str, dict[str, Any]]) -> dict[str, SetRule]:
    return {
        k: SetRule(v["score"], math.inf if v["q"] is None else float(v["q"]), int(v["k_reg"]), float(v["lam"]))
        for k, v in d.items()
    }


# ----------------------------------------------------------------------------- the run's stored sets


def fit_and_check(
    predictor: Predictor,
    tokens: np.ndarray,
    alphas: Sequence[float],
    *,
    ood: np.ndarray | None = None,
    seed: int = 0,
    on_chunk: OnChunk | None = None,
) -> tuple[dict[str, SetRule], dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """(rules fitted on the first half of held-out ``tokens``, ``evaluate_rules`` columns of the second
    half, and of shifted ``ood`` tokens when given); ``on_chunk`` sees the second half's chunks."""
    for a in alphas:
        if not 0 < a < 1:
            raise InputError(f"alpha must be in (0, 1), got {a}")
    half = len(tokens) // 2
    rules = fit_rules(predictor, tokens[:half], alphas, seed)
    if len(tokens) - half < 2:
        raise InputError(f"{len(tokens)} held-out tokens leave none to check the sets on")
    check = evaluate_rules(predictor, tokens[half:], rules, seed, on_chunk)
    return rules, check, evaluate_rules(predictor, ood, rules, seed) if ood is not None else None


def set_names(rules: dict[str, SetRule], predictor: Predictor) -> list[str]:
    """The sets ``evaluate_rules`` reports: the rules', and the support of a sparse head."""
    return [*rules, *([SUPPORT] if has_support(predictor) else [])]


def fit_conformal(
    runs: Sequence[Run],
    tokens: np.ndarray,
    *,
    alphas: Sequence[float] = ALPHAS,
    prediction: Prediction | None = None,
    ood: np.ndarray | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """``fit_and_check`` of the predictive of ``runs`` under ``prediction``, as the record
    ``save_conformal`` stores under the prediction's key: the rules and the summaries of their sets."""
    prediction = prediction or Prediction()
    predictor = build_predictor(runs, prediction)
    rules, check, shifted = fit_and_check(predictor, tokens, alphas, ood=ood, seed=seed)
    names = set_names(rules, predictor)
    record = {
        "key": temperature_key(runs, prediction),
        "alphas": [float(a) for a in alphas],
        "rules": rules_to_json(rules),
        "calibration_tokens": len(tokens) // 2,
        "check_tokens": len(tokens) - len(tokens) // 2,
        "check": {n: summary(check, n) for n in names},
    }
    if shifted is not None:
        record["ood"] = {n: summary(shifted, n) for n in names}
    return record


def save_conformal(run_dir: Path, record: dict[str, Any]) -> Path:
    """Merge one fit into RUN/conformal.json (other methods' fits are kept)."""
    path = Path(run_dir) / CONFORMAL_FILE
    stored: dict[str, Any] = {"fits": {}}
    if path.is_file():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            pass  # a damaged file is replaced by this fit
    stored.setdefault("fits", {})[record["key"]] = record
    atomic_write(path, json.dumps(stored, indent=1) + "\n")
    return path


def fit_flags(key: str) -> str:
    """The ``gptv conformal`` flags that fit the prediction stored under ``key`` (``temperature_key``)."""
    return {Default.name: "", POINT: " --mc-samples 0"}.get(key, f" --method {key}")


def load_rule(run_dir: Path, key: str, alpha: float, score: str = "lac") -> SetRule:
    """The stored rule ``score`` at ``alpha`` for the prediction ``key`` (InputError naming the file
    and the command to run when it is not there)."""
    path = Path(run_dir) / CONFORMAL_FILE
    hint = f"fit it with `gptv conformal {run_dir} --alpha {alpha:g}{fit_flags(key)}`"
    if not path.is_file():
        raise InputError(f"{path} does not exist: {hint}")
    try:
        rules = json.loads(path.read_text(encoding="utf-8"))["fits"][key]["rules"]
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path} holds no conformal sets for {key!r} ({e}): {hint}") from None
    name = f"{score}@{alpha:g}"
    if name not in rules:
        raise InputError(
            f"{path} has no {score} set at alpha {alpha:g} for {key!r} (it has {', '.join(rules)}): {hint}"
        )
    return rules_from_json({name: rules[name]})[name]


def fitted_alphas(run_dir: Path, score: str = "lac") -> dict[str, list[float]]:
    """The alphas at which RUN/conformal.json holds a ``score`` set, by prediction key (``load_rule``'s
    ``key``); {} when the file is missing or unreadable."""
    prefix = score + "@"
    try:
        fits = json.loads((Path(run_dir) / CONFORMAL_FILE).read_text(encoding="utf-8"))["fits"]
        return {
            key: sorted(float(n[len(prefix) :]) for n in fit["rules"] if n.startswith(prefix))
            for key, fit in fits.items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def lac_min_prob(runs: Sequence[Run], prediction: Prediction, alpha: float) -> float:
    """1 - q of the stored LAC set at ``alpha`` for the predictive of ``runs`` under ``prediction``:
    its set is {v : p_v >= this} (``gptv sample --conformal``)."""
    rule = load_rule(runs[0].folder, temperature_key(runs, prediction), alpha, "lac")
    return max(0.0, 1.0 - rule.q)
