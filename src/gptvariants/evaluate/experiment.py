"""`gptv experiment`: the study's Table 1, redone: every variant, one budget, one evaluation.

Steps, each skipped when its output already exists (so a rerun resumes):
  1. data     a prepared folder, or any `gptv prepare` source prepared into OUT/data
  2. targets  teacher sets for the sigmoid variants, in DATA/targets/NAME: the exact support
              (`oracle`, p_true >= 0.01) on the synthetic language; on text the trained
              baseline (`ckpt:`, trained first) when it is in the run, since a neural teacher
              beats counts, else `ngram:3`; candidates with teacher probability >= 0.01, at
              most 50, plus the true token (the study's top rule); with --sets sample, the
              distinct tokens among 7 teacher draws plus the true token (targets.py)
  3. train    every variant with the same model shape, seed and budget into OUT/runs/VARIANT;
              a run is finished when its checkpoint is at max_iters, a shorter one resumes
  4. eval     `evaluate.evaluate` into OUT/runs/VARIANT/eval/val.json
  5. report   OUT/report.md, results.json, results.csv, curves.png, reliability.png,
              ppl_vs_selfbleu.png

Budget: "600" = 600 optimizer steps per variant; "5m" / "90s" / "1h" = that much training
wall time per variant, turned into max_iters by timing CALIBRATION_STEPS steps of each
variant (median ms/step after the first steps) -- approximate, since periodic validation is
not counted; the steps actually used are in the report. The resolved plan is stored in
OUT/plan.json and reused by reruns.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..common.atomic import atomic_write
from ..common.errors import InputError
from ..core.config import Config, load_config
from ..core.variants import get_variant, study_variants
from ..data.dataset import TokenDataset
from ..data.prepare import prepare
from ..intervals import RESAMPLES
from ..predict.options import ALPHAS
from ..store.checkpoint import CheckpointError
from ..store.run import RunFolder
from ..targets import build_targets
from ..train.loop import train
from . import comparators as U
from .evaluation import default_out, evaluate
from .options import DEFAULT_BUDGET
from .over_seeds import score_figures, scores_over_seeds_section, set_figures, sets_over_seeds_section
from .report import experiment_row, experiment_table, plot_experiment, write_report
from .sets import run_sets
from .verdicts import SeedStudy, run_folder

# nanoGPT's CPU recipe (4 layers, 4 heads, 128 wide, block 64, batch 12). The default run, all
# seven variants at DEFAULT_BUDGET steps with data, oracle sets and evaluation, took 323 s on
# an idle 2-core CPU (59-70 ms/step; benchmarks/README.md), so it fits a laptop's coffee break.
DEFAULT_SHAPE: dict[str, Any] = {
    "n_layer": 4,
    "n_head": 4,
    "n_embd": 128,
    "block_size": 64,
    "batch_size": 12,
    "learning_rate": 1e-3,
    "min_lr": 1e-4,
    "warmup_iters": 50,
    "dropout": 0.0,
}
EVAL_POINTS = 10  # validation evaluations per run (the curves)
EVAL_ITERS = 10  # batches per validation estimate
CALIBRATION_STEPS = 8
TEACHER_MIN_PROB = 0.01
TEACHER_K = 50
SAMPLE_K = 8  # draws per position of --sets sample, the true token included


def parse_budget(budget: str) -> tuple[str, float]:
    """ "600" -> ("steps", 600); "90s" / "5m" / "1.5h" -> ("seconds", 90 / 300 / 5400)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(budget))
    if not m or float(m.group(1)) <= 0 or (not m.group(2) and "." in m.group(1)):
        raise InputError(f"budget {budget!r}: give a number of steps (600) or a duration per variant (90s, 5m, 1h)")
    if not m.group(2):
        return "steps", int(m.group(1))
    return "seconds", float(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2)]


def parse_variants(spec: str | None) -> list[str]:
    """Comma-separated variant names, validated (unknown names raise ValueError); None = the study's."""
    if not spec:
        return study_variants()
    names = [n.strip() for n in spec.split(",") if n.strip()]
    for n in names:
        get_variant(n)
    if len(set(names)) != len(names):
        raise InputError(f"variant listed twice in {spec!r}")
    return names


def _log(msg: str) -> None:
    print(f"[experiment] {msg}", flush=True)


# ----------------------------------------------------------------------------- steps


def resolve_data(data: str, out: Path, seed: int = 1337) -> Path:
    """A prepared folder as is; a source is prepared into OUT/data once (kept on reruns)."""
    path = Path(data).expanduser()
    if path.is_dir():
        TokenDataset(path)  # fails clearly when the folder is not a complete dataset
        return path
    target = out / "data"
    if (target / "meta.json").is_file():
        meta = json.loads((target / "meta.json").read_text())
        if meta.get("source") != data:
            raise InputError(f"{target} holds {meta.get('source')!r}, not {data!r}; use another --out")
        _log(f"data: {target} (already prepared)")
        return target
    _log(f"data: preparing {data} into {target}")
    prepare(data, target, seed=seed)
    return target


def teacher_for(data: TokenDataset, variants: list[str], out: Path, sets: str = "top") -> tuple[str, str] | None:
    """(teacher spec, target-set name) for the sigmoid variants, or None when there are none."""
    if not any(get_variant(v).sigmoid for v in variants):
        return None
    if data.synthetic is not None:
        spec, name = "oracle", "oracle"
    elif "baseline" in variants:
        spec, name = f"ckpt:{out / 'runs' / 'baseline'}", "ckpt_baseline"
    else:
        spec, name = "ngram:3", "ngram_3"
    return spec, (f"{name}-sample{SAMPLE_K}" if sets == "sample" else name)


def build_sets(data_dir: Path, teacher: str, name: str, select: str = "top") -> None:

    path = data_dir / "targets" / name
    meta_path = path / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("teacher") == teacher and meta["rules"].get("select", "top") == select:
            _log(f"targets: {path} (already built)")
            return
    _log(f"targets: building {name} with teacher {teacher} ({select} rule)")
    V = TokenDataset(data_dir).vocab_size
    if select == "sample":
        meta = build_targets(data_dir, teacher, path, k=min(SAMPLE_K, V), select="sample", progress=False)
    else:  # a character vocabulary can be smaller than 50
        meta = build_targets(data_dir, teacher, path, k=min(TEACHER_K, V), min_prob=TEACHER_MIN_PROB, progress=False)
    _log(f"targets: mean set size {meta['mean_set_size']:.2f}")


def run_config(
    variant: str, data_dir: Path, run_dir: Path, max_iters: int, seed: int, config_file: str | None, targets: str | None
) -> Config:
    """The training config of one variant: DEFAULT_SHAPE < config file < the variant's defaults < the experiment."""
    # a variant's own defaults (the dropout of baseline-dropout) win over the default shape and a
    # shape file alike: in a comparison of variants each must be itself
    own = get_variant(variant).defaults
    overrides: dict[str, Any] = {} if config_file else dict(DEFAULT_SHAPE)
    overrides.update(own)
    overrides.update(
        {
            "data": str(data_dir),
            "out_dir": str(run_dir),
            "max_iters": max_iters,
            "seed": seed,
            "eval_interval": max(1, max_iters // EVAL_POINTS),
            "eval_iters": EVAL_ITERS,
            "log_interval": max(1, max_iters // 20),
            "progress": "lines",
            "tensorboard": False,
        }
    )
    if targets and get_variant(variant).sigmoid:
        overrides["targets"] = targets
    return load_config(variant, config_file, overrides)


def calibrate_steps(
    variant: str, data_dir: Path, out: Path, seconds: float, seed: int, config_file: str | None, targets: str | None
) -> tuple[int, float]:
    """(max_iters, ms/step) so that training ``variant`` takes about ``seconds``: times
    CALIBRATION_STEPS steps in a scratch run and takes the median ms/step of all but the first two."""

    scratch = out / "calibration" / variant
    shutil.rmtree(scratch, ignore_errors=True)
    cfg = run_config(variant, data_dir, scratch, CALIBRATION_STEPS, seed, config_file, targets)
    cfg.train.eval_interval, cfg.train.eval_iters, cfg.train.log_interval = 10**9, 1, 1
    train(cfg)
    ms = float(np.median([r["ms_per_step"] for r in RunFolder(scratch).records("train") if r["step"] > 2]))
    shutil.rmtree(scratch, ignore_errors=True)
    return max(1, int(seconds * 1000 / ms)), ms


def checkpoint_step(run_dir: Path) -> int | None:
    """The step a resumed run would continue from (its newest verified checkpoint), None without one."""
    try:
        return RunFolder(run_dir).checkpoint_step()
    except CheckpointError:
        return None


def train_variant(cfg: Config) -> str:
    """Train, resume or skip one run; returns what was done."""

    run_dir = Path(cfg.train.out_dir)
    step = checkpoint_step(run_dir)
    if step is not None and step >= cfg.train.max_iters:
        return "skipped"
    result = train(cfg, resume=step is not None)
    if result.interrupted:
        raise KeyboardInterrupt
    return "resumed" if step is not None else "trained"


# ----------------------------------------------------------------------------- driver


def run_experiment(
    out: str | Path,
    data: str = "synthetic:default",
    variants: list[str] | None = None,
    budget: str = DEFAULT_BUDGET,
    seed: int = 1337,
    config_file: str | None = None,
    num_samples: int = 100,
    max_new_tokens: int = 64,
    command: str | None = None,
    sets: str = "top",
    methods: list[str] | None = None,
    ood: str | None = None,
    seeds: list[int] | None = None,
    resamples: int = RESAMPLES,
) -> Path:
    """Run (or resume) the whole experiment into ``out``; returns the path of report.md.

    ``seeds``: every variant once per seed (default ``seed`` alone; ``run_folder``); table cells are means
    over seeds with t intervals, or with one seed the eval's block bootstrap (``resamples``; 0 = none).

    ``sets``: the sigmoid variants' teacher sets, "top" (the study's rule) or "sample".
    ``methods``: uncertainty comparators (``comparators.METHOD_CHOICES``) for the report's
    "Uncertainty" section, with ``ood`` as the shifted text (default: a shifted synthetic language).
    """
    if sets not in ("top", "sample"):
        raise InputError(f"sets must be 'top' or 'sample', not {sets!r}")
    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    methods = methods or []
    variants = _variants(variants, methods)
    seeds = list(dict.fromkeys(seeds or [seed]))
    seed = seeds[0]
    command = command or _command(
        data, variants, budget, seeds, num_samples, max_new_tokens, out, sets, config_file, methods, ood
    )
    plan, save_plan = _plan(out, budget, seed, data, config_file, sets)
    data_dir, dataset = _open_data(data, out, plan, bool(methods) and ood is None)
    teacher = teacher_for(dataset, variants, out, sets)
    plan["targets"] = teacher[1] if teacher else None
    plan["seeds"] = seeds
    # a checkpoint teacher must be trained before the sigmoid variants that learn from it
    order = sorted(variants, key=lambda v: v != "baseline")
    runs_by_seed = {s: {v: run_folder(out, v, s, seed) for v in order} for s in seeds}
    runs = runs_by_seed[seed]
    _train_all(runs_by_seed, teacher, sets, data_dir, out, plan, save_plan, config_file)
    seed_runs = _ensemble_members(methods, seeds, out, data_dir, plan, save_plan, config_file)
    study = _evaluate_all(runs_by_seed, data_dir, dataset, plan, num_samples, max_new_tokens, resamples)
    rows = study.rows()
    ideal = dataset.meta.get("synthetic", {}).get("cross_entropy_val")
    plot_experiment(out, runs, study.evals[seed], rows, ideal, study)
    section = _sections(out, data_dir, dataset, order, methods, runs_by_seed, seed_runs, ood)
    plan["last_wall_seconds"] = time.perf_counter() - t_start
    save_plan()
    report = write_report(out, study, plan, command, section)
    print(experiment_table(rows, study.intervals()))
    _log(f"report: {report} ({plan['last_wall_seconds']:.0f} s this run)")
    return report


def _ensemble_members(
    methods: list[str], seeds: list[int], out: Path, data_dir: Path, plan: dict[str, Any], save_plan, config_file
) -> dict[int, list[Path]]:
    """seed -> the other runs of its deep ensemble (``comparators.ensemble_seeds``), trained or reused
    in OUT/runs/baseline-seedM; {} without the ensemble method."""
    if "ensemble" not in methods:
        return {}
    members = U.ensemble_seeds(seeds)
    for m in (m for ms in members.values() for m in ms):
        _train_one(
            f"baseline-seed{m}",
            "baseline",
            out / "runs" / f"baseline-seed{m}",
            data_dir,
            out,
            plan,
            save_plan,
            m,
            config_file,
        )
    return {s: [out / "runs" / f"baseline-seed{m}" for m in ms] for s, ms in members.items()}


def _sections(
    out: Path,
    data_dir: Path,
    dataset: TokenDataset,
    order: list[str],
    methods: list[str],
    runs_by_seed: dict[int, dict[str, Path]],
    seed_runs: dict[int, list[Path]],
    ood: str | None,
) -> list[str]:
    """The report's Uncertainty section (with ``methods``) and its Sets section, under the same shift
    (``ood``, or the shifted synthetic language): every seed's systems, the first seed's tables in full
    and, with several seeds, each score and set figure over the seeds (``over_seeds``)."""
    shift = ood or (U.DEFAULT_OOD if "synthetic" in dataset.meta else None)
    first = next(iter(runs_by_seed))
    section: list[str] = []
    ranked: dict[int, dict[str, list[dict[str, Any]]]] = {}
    set_rows: dict[int, list[dict[str, Any]]] = {}
    sets_first: list[str] = []
    for s, runs in runs_by_seed.items():
        tag = "" if s == first else f"-seed{s}"
        members = seed_runs.get(s, [])
        if methods:
            _log(f"uncertainty: seed {s}")
            _, lines, ranked[s] = U.run_uncertainty(
                out, data_dir, order, methods, runs, members, ood or U.DEFAULT_OOD, s, _log, tag
            )
            section += lines if s == first else []
        _log(f"sets: conformal sets of every system, seed {s}")
        systems = U.systems(order, methods, runs, members)
        set_rows[s], lines = run_sets(out, data_dir, systems, ood=shift, seed=s, file=f"sets{tag}.json", log=_log)
        sets_first = lines if s == first else sets_first
    if len(runs_by_seed) > 1 and ranked:
        section += scores_over_seeds_section(score_figures(ranked))
    section += sets_first
    if len(runs_by_seed) > 1:
        section += sets_over_seeds_section(set_figures(set_rows, ALPHAS), ALPHAS)
    return section


def _train_all(
    runs_by_seed: dict[int, dict[str, Path]],
    teacher: tuple[str, str] | None,
    sets: str,
    data_dir: Path,
    out: Path,
    plan: dict[str, Any],
    save_plan,
    config_file: str | None,
) -> None:
    """Train, resume or skip every run of every seed, in order, saying which of how many and an ETA."""
    first = next(iter(runs_by_seed))
    progress = Progress(sum(len(r) for r in runs_by_seed.values()))
    for s, runs in runs_by_seed.items():
        for v, run_dir in runs.items():
            if teacher and get_variant(v).sigmoid:
                build_sets(data_dir, *teacher, select=sets)
            _log(progress.next(f"{v}, seed {s}"))
            _train_one(_name(v, s, first), v, run_dir, data_dir, out, plan, save_plan, s, config_file, steps_of=v)


def _evaluate_all(
    runs_by_seed: dict[int, dict[str, Path]],
    data_dir: Path,
    dataset: TokenDataset,
    plan: dict[str, Any],
    num_samples: int,
    max_new_tokens: int,
    resamples: int,
) -> SeedStudy:
    """Evaluate (or reuse the evaluation of) every run of every seed; their rows and evals as a SeedStudy."""
    first = next(iter(runs_by_seed))
    evals = {
        s: {
            v: _evaluate_one(v, r, data_dir, dataset, plan, num_samples, max_new_tokens, s, resamples)
            for v, r in runs.items()
        }
        for s, runs in runs_by_seed.items()
    }
    seconds = plan.get("train_seconds", {})
    per_seed = {
        s: [experiment_row(v, evals[s][v], r, seconds.get(_name(v, s, first))) for v, r in runs.items()]
        for s, runs in runs_by_seed.items()
    }
    return SeedStudy(per_seed, evals, runs_by_seed)


def _name(variant: str, seed: int, first_seed: int) -> str:
    """The run's key in the plan's train_seconds."""
    return variant if seed == first_seed else f"{variant}-seed{seed}"


class Progress:
    """ "run k of n" and an ETA from the mean wall time of the runs trained so far; a run reused from an
    earlier invocation (done in under ``REUSED`` seconds) is left out of the mean, or a resumed
    experiment would promise "about 0 s left"."""

    REUSED = 1.0

    def __init__(self, total: int) -> None:
        self.total, self.done, self.last = total, 0, time.perf_counter()
        self.spent, self.trained = 0.0, 0

    def next(self, what: str) -> str:
        now = time.perf_counter()
        if self.done and now - self.last >= self.REUSED:
            self.spent, self.trained = self.spent + now - self.last, self.trained + 1
        self.last = now
        eta = ""
        if self.trained:
            left = self.spent / self.trained * (self.total - self.done)
            eta = f", about {left / 60:.1f} min of training left" if left >= 60 else f", about {left:.0f} s left"
        self.done += 1
        return f"run {self.done} of {self.total}: {what}{eta}"


def _variants(variants: list[str] | None, methods: list[str]) -> list[str]:
    """The variants to train: the given ones (default the study's) and those the comparators need."""
    variants = list(dict.fromkeys((variants or study_variants()) + U.extra_variants(methods)))
    if methods and "baseline" not in variants:
        raise InputError("the uncertainty comparison (--methods) needs the baseline among the variants")
    for v in variants:
        get_variant(v)
    return variants


def _open_data(data: str, out: Path, plan: dict[str, Any], needs_shift: bool) -> tuple[Path, TokenDataset]:
    """The prepared data folder (recorded in the plan); ``needs_shift``: the comparators have no --ood,
    so the data must be the synthetic language, which can be shifted."""
    data_dir = resolve_data(data, out)
    plan["data"] = str(data_dir)
    dataset = TokenDataset(data_dir)
    if needs_shift and dataset.synthetic is None:
        raise InputError(
            "the uncertainty comparison needs shifted text on this data: pass --ood text:PATH (or a "
            "prepared folder with the same tokenizer)"
        )
    return data_dir, dataset


def _command(data, variants, budget, seeds, num_samples, max_new_tokens, out, sets, config_file, methods, ood) -> str:
    argv = [
        "--data",
        data,
        "--variants",
        ",".join(variants),
        "--budget",
        budget,
        *(["--seed", str(seeds[0])] if len(seeds) == 1 else ["--seeds", ",".join(map(str, seeds))]),
        "--num-samples",
        str(num_samples),
        "--max-new-tokens",
        str(max_new_tokens),
        "--out",
        str(out),
    ]
    argv += ["--sets", sets] if sets != "top" else []
    argv += ["--methods", ",".join(methods)] if methods else []
    argv += ["--ood", ood] if ood else []
    argv += ["--config", config_file] if config_file else []
    return "gptv experiment " + " ".join(shlex.quote(a) for a in argv)


def _plan(out: Path, budget: str, seed: int, data: str, config_file: str | None, sets: str):
    """OUT/plan.json (the resolved budget of every run), refusing a rerun that changes what it fixes."""
    plan_path = out / "plan.json"
    plan = json.loads(plan_path.read_text()) if plan_path.is_file() else {}
    fixed = (budget, seed, data, config_file, sets)
    if plan and (plan["budget"], plan["seed"], plan["source"], plan["config"], plan.get("sets", "top")) != fixed:
        raise InputError(
            f"{out} holds an experiment with budget {plan['budget']}, seed {plan['seed']}, data "
            f"{plan['source']!r}, config {plan['config']!r} and {plan.get('sets', 'top')} sets; "
            "use another --out to change them"
        )
    kind, _ = parse_budget(budget)
    plan.update(
        {"budget": budget, "budget_kind": kind, "seed": seed, "source": data, "config": config_file, "sets": sets}
    )
    plan.setdefault("max_iters", {})
    plan.setdefault("train_seconds", {})

    def save_plan() -> None:
        atomic_write(plan_path, json.dumps(plan, indent=1) + "\n")

    return plan, save_plan


def _train_one(
    name: str,
    variant: str,
    run_dir: Path,
    data_dir: Path,
    out: Path,
    plan: dict[str, Any],
    save_plan,
    seed: int,
    config_file: str | None,
    steps_of: str | None = None,
) -> None:
    """Resolve the run's step budget (timing it for a wall-time budget; ``steps_of``: the run whose budget
    it shares, e.g. the same variant at another seed), then train, resume or skip it."""
    kind, amount = parse_budget(plan["budget"])
    targets = plan["targets"]
    key = steps_of or name
    if key not in plan["max_iters"]:
        if kind == "steps":
            plan["max_iters"][key] = int(amount)
        else:
            plan["max_iters"][key], ms = calibrate_steps(variant, data_dir, out, amount, seed, config_file, targets)
            _log(f"{key}: {ms:.0f} ms/step -> {plan['max_iters'][key]} steps for {plan['budget']}")
        save_plan()
    cfg = run_config(variant, data_dir, run_dir, plan["max_iters"][key], seed, config_file, targets)
    _log(f"train {name}: {cfg.train.max_iters} steps into {run_dir}")
    t0 = time.perf_counter()
    done = train_variant(cfg)
    if done != "skipped":
        plan["train_seconds"][name] = plan["train_seconds"].get(name, 0.0) + time.perf_counter() - t0
        save_plan()
    _log(f"train {name}: {done}")


def _evaluate_one(
    v: str,
    run_dir: Path,
    data_dir: Path,
    dataset: TokenDataset,
    plan: dict[str, Any],
    num_samples: int,
    max_new_tokens: int,
    seed: int,
    resamples: int = RESAMPLES,
) -> dict[str, Any]:
    path = default_out(run_dir, "val")
    ev = json.loads(path.read_text()) if path.is_file() else None
    if ev is not None and ev["step"] == plan["max_iters"][v]:
        _log(f"eval {run_dir.parent.name}/{v}: {path} (already done)")
        return ev
    _log(f"eval {run_dir.parent.name}/{v}")
    sets = None if dataset.synthetic is not None else (plan["targets"] or "none")
    return evaluate(
        run_dir,
        data_dir,
        out=path,
        sets=sets,
        num_samples=num_samples,
        max_new_tokens=max_new_tokens,
        seed=seed,
        resamples=resamples,
        temperature=False,
    )
