"""The gptv command: bad input gives a clear, specific error (exit 2), never a traceback."""

import pytest

from gptvariants.cli import main


def _err(capsys, argv):
    code = main(argv)
    return code, capsys.readouterr().err


def test_missing_data_folder(capsys, tmp_path):
    code, err = _err(capsys, ["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")])
    assert code == 2 and "does not exist" in err and "gptv prepare" in err


def test_empty_data_folder(capsys, tmp_path):
    (tmp_path / "d").mkdir()
    code, err = _err(capsys, ["train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "r")])
    assert code == 2 and "meta.json" in err


def test_unknown_variant_and_key(capsys, tiny_data, tmp_path):
    code, err = _err(capsys, ["train", "--variant", "softmax", "--data", str(tiny_data), "--out", str(tmp_path / "r")])
    assert code == 2 and "unknown variant 'softmax'" in err and "baseline" in err
    code, err = _err(capsys, ["train", "--data", str(tiny_data), "--out", str(tmp_path / "r"), "--learnig_rate=1"])
    assert code == 2 and "learning_rate" in err


def test_block_size_larger_than_data(capsys, tiny_data, tmp_path):
    code, err = _err(capsys, ["train", "--data", str(tiny_data), "--out", str(tmp_path / "r"), "--block_size=100000"])
    assert code == 2 and "block_size 100000 is larger than the train split" in err


def test_missing_targets(capsys, tiny_data, tmp_path):
    code, err = _err(capsys, ["train", "--variant", "sig", "--data", str(tiny_data), "--out", str(tmp_path / "r"), "--targets=nope"])
    assert code == 2 and "gptv targets" in err


def test_non_utf8_text(capsys, tmp_path):
    f = tmp_path / "bad.txt"
    f.write_bytes(b"hello \xff world")
    code, err = _err(capsys, ["prepare", f"text:{f}", "--out", str(tmp_path / "d")])
    assert code == 2 and "offset 6" in err and "--errors replace" in err
    assert main(["prepare", f"text:{f}", "--out", str(tmp_path / "d"), "--errors", "replace"]) == 0


def test_variants_listing(capsys):
    assert main(["variants"]) == 0
    out = capsys.readouterr().out
    for name in ("baseline", "smooth", "bayes", "sig", "sig-reg", "sig-pw", "bayes-sig"):
        assert name in out
