"""gptv experiment end to end on synthetic:tiny, its resume logic, and its argument checks."""

import argparse
import csv
import json

import pytest

from gptvariants.apps.cli.parsers import experiment as experiment_parser
from gptvariants.core.variants import REGISTRY
from gptvariants.evaluate import experiment as X
from gptvariants.train.loop import train

STUDY = ["baseline", "smooth", "bayes", "sig", "sig-reg", "sig-pw", "bayes-sig"]  # the 2024 study's seven

TINY_TOML = """
n_layer = 2
n_head = 2
n_embd = 32
block_size = 32
batch_size = 8
warmup_iters = 2
"""


RESULTS_CSV_COLUMNS = (
    "variant steps perplexity self_bleu distinct_4_study distinct_4 nats_per_token bits_per_byte ece brier accuracy "
    "auroc_entropy set_f1 set_f1_best set_best_tau set_size kl_to_truth mutual_information raw_bce ms_per_step "
    "train_seconds"
).split()


def _cli(argv):
    parser = argparse.ArgumentParser(prog="gptv")
    experiment_parser.register_cli(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.mark.parametrize(
    "text,expected",
    [("600", ("steps", 600)), ("90s", ("seconds", 90.0)), ("5m", ("seconds", 300.0)), ("1.5h", ("seconds", 5400.0))],
)
def test_parse_budget(text, expected):
    assert X.parse_budget(text) == expected


@pytest.mark.parametrize("text", ["0", "-5", "1.5", "10x", "m", ""])
def test_parse_budget_rejects(text):
    with pytest.raises(ValueError, match="budget"):
        X.parse_budget(text)


def test_variants_are_validated(tmp_path):
    assert X.parse_variants(None) == [v for v in REGISTRY if REGISTRY[v].group == "study"] == STUDY
    assert X.parse_variants("sig, baseline") == ["sig", "baseline"]
    with pytest.raises(ValueError, match="unknown variant 'bayse'.*did you mean bayes"):
        _cli(["experiment", "--variants", "baseline,bayse", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="twice"):
        X.parse_variants("sig,sig")


def test_experiment_runs_reports_and_resumes(tmp_path, capsys):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_TOML)
    out = tmp_path / "exp"
    argv = [
        "experiment",
        "--data",
        "synthetic:tiny",
        "--variants",
        "baseline,bayes,sig",
        "--budget",
        "16",
        "--num-samples",
        "5",
        "--max-new-tokens",
        "8",
        "--config",
        str(config),
        "--out",
        str(out),
    ]

    # a half-finished sig run (checkpoint at step 8 of 16) must be resumed, not restarted
    data = X.resolve_data("synthetic:tiny", out)
    X.build_sets(data, "oracle", "oracle")
    half = X.run_config("sig", data, out / "runs" / "sig", 16, 1337, str(config), "oracle")
    half.train.max_iters = 8
    train(half)

    assert _cli(argv) == 0
    log = capsys.readouterr().out
    assert "train sig: resumed" in log and "train baseline: trained" in log and str(out / "report.md") in log
    assert X.checkpoint_step(out / "runs" / "sig") == 16

    report = (out / "report.md").read_text()
    assert "| Variant | Perplexity | Self-BLEU | Distinct-4 (study) |" in report
    assert all(f"| {v} |" in report for v in ("baseline", "bayes", "sig"))
    assert "gptv experiment --data synthetic:tiny --variants baseline,bayes,sig --budget 16" in report
    assert "teacher sets `oracle` (the study's top rule" in report
    # every system's conformal sets, under the synthetic shift, in the report and in sets.json
    assert "## Sets" in report
    sets = json.loads((out / "sets.json").read_text())
    assert sets["ood"] == "synthetic?shift=0.5" and {"baseline", "bayes", "sig"} <= {r["system"] for r in sets["rows"]}
    results = json.loads((out / "results.json").read_text())
    rows = {r["variant"]: r for r in results["rows"]}
    assert set(rows) == {"baseline", "bayes", "sig"} and all(r["steps"] == 16 for r in rows.values())
    assert rows["bayes"]["mutual_information"] > 0 and rows["baseline"]["mutual_information"] is None
    assert rows["sig"]["raw_bce"] > 0 and rows["sig"]["kl_to_truth"] > 0
    with open(out / "results.csv") as f:
        table = csv.DictReader(f)
        assert [r["variant"] for r in table] == ["baseline", "bayes", "sig"]
    assert table.fieldnames == RESULTS_CSV_COLUMNS  # the results.csv of earlier versions, column for column
    for png in ("curves.png", "reliability.png", "ppl_vs_selfbleu.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"

    evals = {v: (out / "runs" / v / "eval" / "val.json").stat().st_mtime_ns for v in rows}
    assert _cli(argv) == 0
    log = capsys.readouterr().out
    assert log.count("skipped") == 3 and "already built" in log
    reused = [line for line in log.splitlines() if line.endswith("(already done)")]
    assert sum("] eval " in line for line in reused) == 3 and sum("] sets: " in line for line in reused) == 3
    assert evals == {v: (out / "runs" / v / "eval" / "val.json").stat().st_mtime_ns for v in rows}

    with pytest.raises(ValueError, match="use another --out"):
        _cli([a if a != "16" else "32" for a in argv])


def test_sampled_sets_experiment(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_TOML)
    out = tmp_path / "exp"
    X.run_experiment(
        out, "synthetic:tiny", ["sig"], "4", config_file=str(config), num_samples=2, max_new_tokens=4, sets="sample"
    )
    plan = json.loads((out / "plan.json").read_text())
    assert plan["sets"] == "sample" and plan["targets"] == f"oracle-sample{X.SAMPLE_K}"
    meta = json.loads((out / "data" / "targets" / plan["targets"] / "meta.json").read_text())
    assert meta["rules"]["select"] == "sample" and meta["k"] == X.SAMPLE_K
    run_cfg = json.loads((out / "runs" / "sig" / "config.json").read_text())
    assert run_cfg["objective"]["set_draws"] == X.SAMPLE_K
    assert "sampled: the distinct tokens among k teacher draws" in (out / "report.md").read_text()
    with pytest.raises(ValueError, match="sample sets; use another --out"):
        X.run_experiment(out, "synthetic:tiny", ["sig"], "4", config_file=str(config), num_samples=2, max_new_tokens=4)


def test_duration_budget_is_turned_into_steps(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_TOML)
    out = tmp_path / "exp"
    X.run_experiment(
        out, "synthetic:tiny", ["baseline"], "2s", config_file=str(config), num_samples=2, max_new_tokens=4
    )
    plan = json.loads((out / "plan.json").read_text())
    steps = plan["max_iters"]["baseline"]
    assert plan["budget_kind"] == "seconds" and steps > X.CALIBRATION_STEPS  # a tiny step takes well under 250 ms
    assert json.loads((out / "results.json").read_text())["rows"][0]["steps"] == steps
    assert not (out / "calibration" / "baseline").exists()


def test_methods_add_the_uncertainty_section(tmp_path, capsys):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_TOML)
    out = tmp_path / "unc"
    argv = [
        "experiment",
        "--data",
        "synthetic:tiny",
        "--variants",
        "baseline",
        "--budget",
        "8",
        "--num-samples",
        "2",
        "--max-new-tokens",
        "4",
        "--config",
        str(config),
        "--methods",
        "all",
        "--ood",
        "synthetic?shift=1.0&tokens=3000",
        "--out",
        str(out),
    ]
    assert _cli(argv) == 0
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == [
        "baseline",
        "baseline-dropout",
        "baseline-seed2337",
        "baseline-seed3337",
        "baseline-seed4337",
        "ensemble",
    ]
    results = json.loads((out / "uncertainty.json").read_text())
    rows = {r["system"]: r for r in results["rows"]}
    assert list(rows) == [
        "baseline",
        "baseline-dropout",
        "ensemble",
        "baseline-dropout + MC dropout",
        "baseline x 4 runs",
        "baseline + Laplace",
    ]
    assert rows["baseline"]["train_cost"] == 1.0 and rows["baseline"]["auroc_token_mi"] is None
    for name in ("ensemble", "baseline-dropout + MC dropout", "baseline x 4 runs", "baseline + Laplace"):
        assert rows[name]["auroc_token_mi"] is not None and rows[name]["draws"] > 1, name
    assert rows["baseline x 4 runs"]["draws"] == 4 and rows["baseline x 4 runs"]["train_cost"] > 3
    assert all(
        r["nll_half_t"] <= r["nll_half"] * 1.01 for r in rows.values()
    )  # T fitted on one half, checked on the other
    report = (out / "report.md").read_text()
    assert "## Uncertainty" in report and "| baseline + Laplace |" in report and "--methods" in report
    assert (out / "uncertainty.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "runs" / "baseline" / "calibration.json").read_text())["temperature"]["default"] > 0
    # every score ranked, the density fitted for each system's first run (issue 19)
    ranked = results["scores"]["baseline x 4 runs"]
    names = [r["score"] for r in ranked]
    assert {"entropy", "mi", "energy", "max_logit", "mahalanobis", "rel_mahalanobis", "knn", "surprisal"} <= set(names)
    aurocs = [r["auroc_token"] for r in ranked]
    assert aurocs == sorted(aurocs, reverse=True)
    assert all(r["prr_ci"] is not None for r in ranked if r["score"] != "surprisal")
    assert ranked[names.index("entropy")]["prr_vs_entropy"]["verdict"] == "no significant difference"
    assert (out / "runs" / "baseline-dropout" / "density.safetensors").is_file()
    assert "### Scores" in report and "| rel_mahalanobis |" in report and "beats" not in report
    # the MI-vs-entropy sentence is worded from the interval of the difference (issue 18)
    said = next(line for line in report.splitlines() if line.startswith("- The highest epistemic score:"))
    assert any(w in said for w in ("better", "worse", "no significant difference")), said


def test_methods_over_two_seeds_rank_the_scores_over_the_seeds(tmp_path, capsys):
    """Every seed's systems are evaluated (their files tagged -seedS) and the report compares each score
    with the entropy over the seeds (issues 18, 19)."""
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_TOML)
    out = tmp_path / "unc2"
    argv = ["experiment", "--data", "synthetic:tiny", "--variants", "baseline", "--budget", "8", "--seeds", "2"]
    argv += ["--num-samples", "2", "--max-new-tokens", "4", "--methods", "laplace", "--config", str(config)]
    argv += ["--ood", "synthetic?shift=1.0&tokens=3000", "--resamples", "20", "--out", str(out)]
    assert _cli(argv) == 0
    first, second = (json.loads((out / f).read_text()) for f in ("uncertainty.json", "uncertainty-seed1338.json"))
    assert (
        [r["system"] for r in first["rows"]]
        == [r["system"] for r in second["rows"]]
        == [
            "baseline",
            "baseline + Laplace",
        ]
    )
    assert second["results"][0]["runs"] == [str(out / "runs-seed1338" / "baseline")]
    report = (out / "report.md").read_text()
    over = report.split("### Scores over 2 seeds")[1].split("## Sets")[0]
    assert "**baseline + Laplace**" in over and "| knn |" in over and "OOD AUROC tok vs H" in over
    assert "token-level OOD AUROC:" in over
    assert "### Sets over 2 seeds" in report and (out / "sets-seed1338.json").is_file()
    capsys.readouterr()
    assert _cli(argv) == 0  # a rerun reuses every system's stored result
    said = [line for line in capsys.readouterr().out.splitlines() if "uncertainty: baseline" in line]
    assert len(said) == 4 and all(line.endswith("(already done)") for line in said), said
    assert (out / "report.md").read_text() == report


def test_a_variants_own_defaults_win_over_a_shape_file(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_TOML + "dropout = 0.0\n")
    cfg = X.run_config("baseline-dropout", tmp_path, tmp_path / "r", 10, 1, str(config), None)
    assert cfg.model.dropout == 0.1  # the file's dropout 0 would make MC dropout impossible
    assert X.run_config("baseline", tmp_path, tmp_path / "b", 10, 1, str(config), None).model.dropout == 0.0


def test_progress_eta_leaves_reused_runs_out(monkeypatch):
    clock = iter([0.0, 0.1, 0.2, 10.2, 20.2])  # a starts at 0.1, reused by 0.2; b and c take 10 s each
    monkeypatch.setattr(X.time, "perf_counter", lambda: next(clock))
    p = X.Progress(6)
    assert p.next("a") == "run 1 of 6: a"
    assert p.next("b") == "run 2 of 6: b"  # a was reused: no ETA from it
    assert p.next("c") == "run 3 of 6: c, about 40 s left"  # b took 10 s; 4 runs left
    assert p.next("d") == "run 4 of 6: d, about 30 s left"
