"""What a new user reads first: `gptv --help`, option help, `gptv variants` against the README."""

from pathlib import Path

import pytest

from gptvariants.apps.cli.main import build_parser, main
from gptvariants.core.variants import REGISTRY

README = Path(__file__).resolve().parents[1] / "README.md"


def test_top_level_help_has_no_rst_markup(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "``" not in out and "gptv: prepare data" in out


@pytest.mark.parametrize("option", ["--top-k", "--seed", "--max-new-tokens"])
def test_sample_options_have_help(option):
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    action = sub.choices["sample"]._option_string_actions[option]
    assert action.help and not action.help.startswith("(default")


def test_variants_and_readme_give_the_ensemble_formula_of_the_code(capsys):
    """The ensemble head trains member k(n) = n mod K on position n (heads/ensemble.py, split=True)."""
    equation = REGISTRY["ensemble"].equation
    assert "n mod K" in equation and "1/N sum_n" in equation
    assert main(["variants"]) == 0
    assert equation in next(line for line in capsys.readouterr().out.splitlines() if line.startswith("ensemble"))
    row = next(line for line in README.read_text().splitlines() if line.startswith("| `ensemble`"))
    assert equation in row
