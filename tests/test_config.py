"""Config resolution: variant defaults < TOML < overrides; typed, validated, with helpful errors."""

import pytest

from gptvariants.config import ConfigError, load_config, parse_overrides


def test_precedence_variant_file_overrides(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('variant = "sig-pw"\nn_layer = 3\n[objective]\npos_weight = 9.0\n[train]\nmax_iters = 77\n')
    cfg = load_config(file=f, overrides={"max_iters": "5"})
    assert cfg.objective.variant == "sig-pw" and cfg.objective.objective == "bce" and cfg.objective.output_bias
    assert cfg.objective.pos_weight == 9.0  # the file beats the variant default
    assert cfg.train.max_iters == 5  # the command line beats the file
    assert cfg.model.n_layer == 3


def test_variant_defaults():
    assert load_config("smooth").objective.label_smoothing == 0.1
    assert load_config("sig-reg").objective.sum_penalty == 1.0
    assert load_config("bayes").objective.head == "bayesian"
    assert load_config("baseline").objective.output_bias is False


def test_unknown_key_names_close_matches():
    with pytest.raises(ConfigError, match="unknown config key 'max_iter'.*max_iters"):
        load_config("baseline", overrides={"max_iter": "3"})


def test_unknown_variant():
    with pytest.raises(ValueError, match="unknown variant 'sigg'.*did you mean sig"):
        load_config("sigg")


def test_types_and_validation():
    cfg = load_config(overrides=parse_overrides(["--learning_rate=3e-4", "--compile", "--bias=false", "--max_iters=1e3"]))
    assert cfg.train.learning_rate == 3e-4 and cfg.train.compile is True and cfg.model.bias is False and cfg.train.max_iters == 1000
    with pytest.raises(ConfigError, match="batch_size expects int"):
        load_config(overrides={"batch_size": "many"})
    with pytest.raises(ConfigError, match="divisible by n_head"):
        load_config(overrides={"n_embd": "30", "n_head": "4"})
    with pytest.raises(ConfigError, match="written --key=value"):
        parse_overrides(["max_iters=3"])


def test_size_presets_fill_unless_explicit():
    cfg = load_config(overrides={"size": "gpt2"})
    assert (cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd) == (12, 12, 768)
    cfg = load_config(overrides={"size": "gpt2", "n_layer": "2"})
    assert (cfg.model.n_layer, cfg.model.n_embd) == (2, 768)
    with pytest.raises(ConfigError, match="unknown model size"):
        load_config(overrides={"size": "gpt3"})


def test_shipped_configs_load():
    from pathlib import Path

    for f in sorted((Path(__file__).parents[1] / "configs").rglob("*.toml")):
        load_config(file=f)
