"""Fuzzing the inputs a careless user types: every bad config value (on the command line and in a
TOML file), unknown key, unreadable file and out-of-range command-line argument must end with one
line on stderr, no traceback, and exit code 2 -- before any training starts.

The bad values are generated from the constraints themselves (``config.key_check`` for config
keys, the ``.check`` of each ``argtypes`` function for command-line options), so a key or option
added later is fuzzed too.
"""

import contextlib
import io
import json
import math
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gptvariants.apps.cli.train as train_module  # where `gptv train` finds train()
from gptvariants.apps.cli.main import build_parser, main
from gptvariants.common.checks import Bool, Choice, Device, Float, Int, Text
from gptvariants.core.config import KEYS, Config, key_check

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], derandomize=True
)
WORDS = st.text(alphabet=string.ascii_letters + "!#%&*/:@^~", min_size=1, max_size=10)


def bad_text(check) -> st.SearchStrategy[str]:
    """Text that ``check`` must refuse."""
    if isinstance(check, Int):
        options = [
            st.sampled_from(["nan", "inf", "-inf", "1e400", "2.5", "0x10", "true", "1,000", ""]),
            WORDS,
            st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: not x.is_integer()).map(repr),
            st.integers(min_value=check.hi + 1).map(str),
        ]
        if check.lo is not None:
            options.append(st.integers(max_value=check.lo - 1).map(str))
        return st.one_of(options)
    if isinstance(check, Float):
        options = [st.sampled_from(["nan", "-nan", "inf", "-inf", "1e400", "-1e999", "NaN", "two", ""]), WORDS]
        if check.lo is not None:
            options.append(
                st.floats(max_value=check.lo, exclude_max=not check.lo_open, allow_nan=False, allow_infinity=False).map(
                    repr
                )
            )
        if check.hi is not None:
            options.append(
                st.floats(min_value=check.hi, exclude_min=not check.hi_open, allow_nan=False, allow_infinity=False).map(
                    repr
                )
            )
        return st.one_of(options)
    if isinstance(check, Bool):
        return WORDS.filter(lambda t: t.strip().lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"))
    if isinstance(check, Choice):
        return WORDS.filter(lambda t: t not in check.options)
    if isinstance(check, Device):
        return WORDS.filter(lambda t: not Device.PATTERN.fullmatch(t.strip()))
    raise AssertionError(f"no bad values for {check!r}")


def toml_literal(text: str, check) -> str:
    """The TOML form of a bad value: a number where the text is one, else a string (refused as text too)."""
    if isinstance(check, (Int, Float)):
        try:
            x = float(text)
        except ValueError:
            return json.dumps(text)
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return text if text.lstrip("-").isdigit() else repr(x)
    return json.dumps(text)


def _checks() -> dict[str, object]:
    cfg = Config()
    return {k: key_check(getattr(cfg, s), k) for k, s in KEYS.items()}


FUZZED_KEYS = sorted(k for k, c in _checks().items() if not isinstance(c, Text))
TEXT_KEYS = sorted(k for k, c in _checks().items() if isinstance(c, Text))


@pytest.fixture
def no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a bad input reached training")

    monkeypatch.setattr(train_module, "train", refuse)


def _fails_in_one_line(argv: list[str], *needles: str) -> str:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    text = err.getvalue()
    assert code == 2, (argv, code, text)
    assert text.count("\n") == 1 and text.startswith("gptv ") and ": error: " in text, (argv, text)
    assert "Traceback" not in text
    for needle in needles:
        assert needle in text, (argv, text)
    return text


@FUZZ
@given(data=st.data())
def test_bad_config_values_on_the_command_line(no_training, tiny_data, tmp_path, data):
    key = data.draw(st.sampled_from(FUZZED_KEYS), label="key")
    value = data.draw(bad_text(_checks()[key]), label="value")
    spelling = data.draw(st.sampled_from([key, key.replace("_", "-")]), label="spelling")
    _fails_in_one_line(["train", "--data", str(tiny_data), "--out", str(tmp_path / "r"), f"--{spelling}={value}"], key)
    assert not (tmp_path / "r").exists()


@FUZZ
@given(data=st.data())
def test_bad_config_values_in_a_toml_file(no_training, tiny_data, tmp_path, data):
    path = tmp_path / "bad.toml"
    kind = data.draw(st.sampled_from(["value", "text key", "unknown key", "binary", "syntax"]), label="kind")
    if kind == "value":
        key = data.draw(st.sampled_from(FUZZED_KEYS), label="key")
        check = _checks()[key]
        body = f"{key} = {toml_literal(data.draw(bad_text(check), label='value'), check)}\n"
    elif kind == "text key":
        key = data.draw(st.sampled_from(TEXT_KEYS), label="key")
        body = f"{key} = {data.draw(st.integers() | st.floats(allow_nan=False) | st.booleans(), label='value')!r}\n"
        body = body.replace("True", "true").replace("False", "false")
    elif kind == "unknown key":
        names = st.from_regex(r"[a-z][a-z_]{0,15}", fullmatch=True).filter(lambda k: k not in KEYS)
        key = data.draw(names, label="key")
        body = f"{key} = 1\n"
    elif kind == "binary":
        body = None
        path.write_bytes(b"\xff" + data.draw(st.binary(max_size=40), label="bytes"))
    else:
        body = data.draw(
            st.sampled_from(
                [
                    "n_layer = [\n",
                    "[model\nn_layer = 2\n",
                    "n_layer = 2 2\n",
                    "= 3\n",
                    "[[train]]\nmax_iters = 1\n",
                    "[optimizer]\nlr = 1\n",
                ]
            ),
            label="body",
        )
    if body is not None:
        path.write_text(body)
    _fails_in_one_line(
        ["train", "--data", str(tiny_data), "--out", str(tmp_path / "r"), "--config", str(path)],
        str(path) if kind in ("binary", "syntax", "value", "text key") else "",
    )


def _options_with_checks() -> list[tuple[str, str, object, list[str]]]:
    """(subcommand, option, check, the subcommand's required arguments) for every option typed by argtypes."""
    parser = build_parser()
    subs = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    found = []
    for name, p in subs.items():
        required = []
        for a in p._actions:
            if not a.option_strings and a.dest != "help":
                required.append("x")
            elif a.required:
                required += [a.option_strings[0], "x"]
        for a in p._actions:
            if hasattr(a.type, "check") and a.option_strings:
                found.append((name, a.option_strings[0], a.type.check, required))
    return found


OPTIONS = _options_with_checks()


def test_the_fuzzed_options_cover_prepare_and_targets():
    covered = {(c, o) for c, o, _, _ in OPTIONS}
    assert {
        ("targets", "--k"),
        ("targets", "--batch-size"),
        ("targets", "--ratio"),
        ("targets", "--top-p"),
        ("targets", "--device"),
        ("prepare", "--seed"),
        ("prepare", "--val-fraction"),
    } <= covered


@FUZZ
@given(data=st.data())
def test_bad_command_line_arguments(no_training, data):
    command, option, check, required = data.draw(st.sampled_from(OPTIONS), label="option")
    value = data.draw(bad_text(check), label="value")
    spelling = data.draw(st.sampled_from([option, "--" + option[2:].replace("-", "_")]), label="spelling")
    _fails_in_one_line([command, *required, f"{spelling}={value}"], f"gptv {command}: error: argument {option}")
