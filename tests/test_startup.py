"""`gptv --help`, every `gptv CMD --help`, argument errors and config errors answer without torch:
the parsers, the config and the registries' names import none of it (issue 21)."""

import json
import os
import subprocess
import sys

import pytest

from gptvariants.apps.cli.main import build_parser
from gptvariants.core.components import HEAD_SPECS, NoKeys, check_registered
from gptvariants.core.heads import LinearHead
from gptvariants.predict.methods import Method, register_method

COMMANDS = sorted(dict.fromkeys(next(a for a in build_parser()._actions if a.choices).choices))


def _gptv(*argv: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run `python -X importtime -m gptvariants ARGV`: the result and the modules it imported."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "gptvariants", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    modules = [line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")]
    return done, modules


def _no_torch(modules: list[str]) -> None:
    assert "gptvariants.apps.cli.main" in modules  # importtime's output was read
    assert not [m for m in modules if m == "torch" or m.startswith("torch.")]


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["sample", "--help"],
        ["sample", "--top-k", "x"],  # a bad value
        ["eval", "--ckpt", "R", "--num-samples", "-1"],
        ["eval", "--no-such-flag"],  # a bad flag
        ["experiment"],  # a missing required option
        ["train", "--help-config", "--variant", "bayes-sig"],
    ],
)
def test_help_and_argument_errors_import_no_torch(argv):
    done, modules = _gptv(*argv)
    _no_torch(modules)
    if argv[-1] == "--help" or "--help-config" in argv:
        assert done.returncode == 0 and done.stdout
    else:
        assert done.returncode == 2
        errors = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
        assert len(errors) == 1 and "error:" in errors[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_imports_no_torch(command):
    done, modules = _gptv(command, "--help")
    assert done.returncode == 0 and f"gptv {command}" in done.stdout
    _no_torch(modules)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--bad_key=1", "unknown config key 'bad_key'; see `gptv train --help-config` (in command line)"),
        ("--n_layr=2", "unknown config key 'n_layr'; did you mean n_layer, min_lr? (in command line)"),
        ("--n_layer=2.5", "n_layer expects an integer in [1, 1000], got '2.5' (command line)"),
    ],
)
def test_a_bad_config_key_or_value_is_one_line_and_exit_2_before_torch_loads(tmp_path, override, message):
    done, modules = _gptv("train", "--out", str(tmp_path / "new-run"), override)
    _no_torch(modules)
    errors = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
    assert done.returncode == 2 and errors == [f"gptv train: error: {message}"]
    assert not (tmp_path / "new-run").exists()


def test_the_names_known_without_torch_are_the_registries():
    """components.py and predict/options.py list what HEADS, OBJECTIVES and METHODS register, in order."""
    code = (
        "import json, sys\n"
        "from gptvariants.core.components import HEAD_SPECS, OBJECTIVE_SPECS\n"
        "from gptvariants.predict.options import METHOD_SPECS\n"
        "before = [list(HEAD_SPECS), list(OBJECTIVE_SPECS), list(METHOD_SPECS)]\n"
        "assert 'torch' not in sys.modules\n"
        "from gptvariants.core.heads import HEADS\n"
        "from gptvariants.core.objectives import OBJECTIVES\n"
        "from gptvariants.predict.methods import METHODS\n"
        "print(json.dumps([before, [list(HEADS), list(OBJECTIVES), list(METHODS)]]))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    before, registered = json.loads(done.stdout)
    assert before == registered


def test_a_class_that_disagrees_with_its_listed_facts_is_refused():
    class NotBayesian(LinearHead):  # listed as stochastic, with BayesianConfig
        pass

    with pytest.raises(ValueError, match="registered as 'bayesian' disagrees with core/components.py"):
        check_registered(HEAD_SPECS, "bayesian", NotBayesian)
    check_registered(HEAD_SPECS, "linear", LinearHead)  # agrees
    assert LinearHead.Config is NoKeys


def test_a_method_not_listed_in_the_options_is_refused():
    class Unlisted(Method):
        name = "unlisted"

    with pytest.raises(ValueError, match="'unlisted' .* is not listed in predict/options.py"):
        register_method(Unlisted)
