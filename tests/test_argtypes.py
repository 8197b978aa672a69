"""argparse type functions: each value outside its range is refused with one clear line."""

import argparse
import math

import pytest

from gptvariants.common import argtypes as A


@pytest.mark.parametrize(
    "fn,good,bad",
    [
        (
            A.positive_int,
            [("1", 1), ("1e3", 1000), ("7.0", 7), ("1_000", 1000)],
            ["0", "-3", "2.5", "nan", "inf", "1e400", "x", ""],
        ),
        (A.non_negative_int, [("0", 0), ("12", 12)], ["-1", "0.5", "inf", "9" * 30]),
        (A.finite_float, [("-2.5", -2.5), ("0", 0.0), ("1e-3", 1e-3)], ["nan", "inf", "-inf", "1e400", "one"]),
        (A.non_negative_float, [("0", 0.0), ("3.5", 3.5)], ["-0.1", "nan", "inf"]),
        (A.positive_float, [("0.1", 0.1)], ["0", "-1", "nan"]),
        (A.unit_interval, [("0", 0.0), ("1", 1.0), ("0.5", 0.5)], ["-0.01", "1.01", "nan"]),
        (A.probability_open_closed, [("1", 1.0), ("0.9", 0.9)], ["0", "1.5", "nan", "-inf"]),
        (A.probability_closed_open, [("0", 0.0), ("0.99", 0.99)], ["1", "-1", "nan"]),
        (A.open_unit_interval, [("0.5", 0.5)], ["0", "1", "nan", "inf"]),
        (A.above_one, [("1.5", 1.5), ("100", 100.0)], ["1", "0.5", "nan", "inf"]),
        (A.at_least_two, [("2", 2)], ["1", "2.5"]),
        (A.device, [("cpu", "cpu"), ("auto", "auto")], ["gpu", "cuda:x", "", "cpu0"]),
    ],
)
def test_ranges(fn, good, bad):
    for text, value in good:
        assert fn(text) == value and type(fn(text)) is type(value)
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match="expected"):
            fn(text)


def test_errors_read_as_one_argparse_line(capsys):
    p = argparse.ArgumentParser(prog="gptv x")
    p.add_argument("--temperature", type=A.non_negative_float)
    with pytest.raises(SystemExit):
        p.parse_args(["--temperature", "nan"])
    assert capsys.readouterr().err.splitlines()[-1] == (
        "gptv x: error: argument --temperature: expected a finite number >= 0, got 'nan'"
    )
    assert math.isfinite(p.parse_args(["--temperature", "0.7"]).temperature)


def test_utf8_file(tmp_path):
    good, bad = tmp_path / "prompts.txt", tmp_path / "latin1.txt"
    good.write_text("The king\nA queen\n", encoding="utf-8")
    bad.write_bytes(b"caf\xe9\n")
    assert A.utf8_file(str(good)) == str(good)
    with pytest.raises(argparse.ArgumentTypeError, match=f"{bad}: not UTF-8 text \\(byte 0xe9 at byte offset 3\\)"):
        A.utf8_file(str(bad))
    with pytest.raises(argparse.ArgumentTypeError, match="no such file"):
        A.utf8_file(str(tmp_path / "missing.txt"))
    with pytest.raises(argparse.ArgumentTypeError, match="is a folder"):
        A.utf8_file(str(tmp_path))
