"""Config resolution: variant defaults < TOML < overrides; typed, validated, with helpful errors."""

import json
import re

import pytest

from gptvariants.common.checks import Float
from gptvariants.core.config import ConfigError, load_config, parse_overrides
from gptvariants.core.variants import REGISTRY


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
    cfg = load_config(
        overrides=parse_overrides(["--learning_rate=3e-4", "--compile", "--bias=false", "--max_iters=1e3"])
    )
    assert (
        cfg.train.learning_rate == 3e-4
        and cfg.train.compile is True
        and cfg.model.bias is False
        and cfg.train.max_iters == 1000
    )
    with pytest.raises(ConfigError, match="batch_size expects an integer"):
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
    with pytest.raises(ConfigError, match="size expects one of gpt2, .*did you mean 'gpt2'"):
        load_config(overrides={"size": "gpt3"})


def test_shipped_configs_load():
    from pathlib import Path

    for f in sorted((Path(__file__).parents[1] / "configs").rglob("*.toml")):
        load_config(file=f)


# ----------------------------------------------------------------------------- one validation layer

BAD_VALUES = [  # each was accepted silently (or gave a traceback) before
    ("n_layer", "2.5", "n_layer expects an integer in [1, 1000]"),
    ("batch_size", "3.7", "batch_size expects an integer"),
    ("min_lr", "inf", "min_lr expects a finite number >= 0"),
    ("weight_decay", "-5", "weight_decay expects a finite number >= 0"),
    ("warmup_iters", "-10", "warmup_iters expects an integer >= 0"),
    ("grad_clip", "nan", "grad_clip expects a finite number >= 0"),
    ("lr_decay_iters", "-5", "lr_decay_iters expects an integer >= 0"),
    ("ckpt_interval", "-1", "ckpt_interval expects an integer >= 0"),
    ("loss_chunk_size", "-1", "loss_chunk_size expects an integer in [0,"),
    ("max_iters", "1e400", "max_iters expects an integer >= 0"),
    ("seed", "-1", "seed expects an integer >= 0"),
    ("n_layer", "99999999999999999999", "n_layer expects an integer in [1, 1000]"),
    ("learning_rate", "0", "learning_rate expects a finite number > 0"),
    ("prior_mu", "-inf", "prior_mu expects a finite number"),
    ("dropout", "1", "dropout expects a number in [0, 1)"),
    ("device", "gpu", "device expects auto, cpu, cuda, cuda:N or mps"),
    ("dtype", "fp8", "dtype expects one of auto, float32, bfloat16, float16"),
    ("compile", "maybe", "compile expects true or false"),
    ("mc_samples", "0", "mc_samples expects an integer in [1, 10000]"),
]


@pytest.mark.parametrize("key,value,message", BAD_VALUES)
def test_bad_values_are_refused_on_the_command_line(key, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(overrides=parse_overrides([f"--{key}={value}"]))


@pytest.mark.parametrize(
    "literal,message",
    [
        ("n_layer = 2.5", "n_layer expects an integer"),
        ("n_layer = 99999999999999999999", "n_layer expects an integer in [1, 1000]"),
        ("grad_clip = nan", "grad_clip expects a finite number"),
        ("min_lr = inf", "min_lr expects a finite number"),
        ("batch_size = true", "batch_size expects an integer"),
        ("compile = 1", "compile expects true or false"),
        ("device = 0", "device expects"),
    ],
)
def test_bad_values_in_a_file_name_the_file(tmp_path, literal, message):
    f = tmp_path / "bad.toml"
    f.write_text(literal + "\n")
    with pytest.raises(ConfigError, match=re.escape(f"{f}: {message}")):
        load_config(file=f)


def test_integral_numbers_are_integers_and_others_are_refused():
    assert load_config(overrides={"max_iters": "1e3", "batch_size": "4.0"}).train.max_iters == 1000
    assert load_config(overrides={"batch_size": 4.0}).train.batch_size == 4
    with pytest.raises(ConfigError, match="expects an integer"):
        load_config(overrides={"batch_size": 4.5})


def test_unreadable_files_name_the_file(tmp_path):
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00\x01 binary")
    with pytest.raises(ConfigError, match=re.escape(f"{binary}: not UTF-8 text (byte 0xff at byte offset 0)")):
        load_config(file=binary)
    broken = tmp_path / "broken.toml"
    broken.write_text("n_layer = [\n")
    with pytest.raises(ConfigError, match=re.escape(f"{broken}: invalid TOML")):
        load_config(file=broken)
    cut = tmp_path / "config.json"
    cut.write_text('{"model": {"n_layer": 2')
    with pytest.raises(ConfigError, match=re.escape(f"{cut}: not valid JSON")):
        load_config(file=cut)


def test_direct_construction_is_validated_too():
    cfg = load_config()
    cfg.model.n_layer = 2.5
    with pytest.raises(ConfigError, match="n_layer expects an integer"):
        cfg.validate()
    cfg = load_config()
    cfg.train.learning_rate = float("nan")
    with pytest.raises(ConfigError, match="learning_rate expects a finite number > 0"):
        cfg.validate()


def test_every_key_has_a_check_and_the_defaults_pass_it():
    from gptvariants.core.config import KEYS, key_check

    cfg = load_config()
    assert {"prior_sigma", "ensemble_size", "label_smoothing", "set_draws"} <= set(KEYS)  # the components' keys
    for k, section in KEYS.items():
        check = key_check(getattr(cfg, section), k)
        assert check(getattr(getattr(cfg, section), k)) == getattr(getattr(cfg, section), k)


def test_components_own_their_keys_and_the_objective_section_reads_them_flat():
    from gptvariants.core.heads import BayesianHead, HeadEnsemble
    from gptvariants.core.objectives import SigmoidBCE

    cfg = load_config("bayes-sig", overrides={"prior_sigma": "0.3", "ensemble_size": "3", "pos_weight": "2"})
    assert cfg.objective.head_config() == BayesianHead.Config(
        prior_sigma=0.3, posterior_sigma_init=0.01, reparam="local", rho_lr_mult=10.0
    )
    assert cfg.objective.part(HeadEnsemble).ensemble_size == 3  # kept, though this run's head does not use it
    assert cfg.objective.objective_config() == SigmoidBCE.Config(pos_weight=2.0)
    cfg.objective.prior_sigma = 0.5  # attribute access writes the component's config
    assert cfg.objective.head_config().prior_sigma == 0.5 and cfg.to_dict()["objective"]["prior_sigma"] == 0.5
    with pytest.raises(AttributeError, match="no attribute 'prior_sigmaa'"):
        _ = cfg.objective.prior_sigmaa


def test_a_config_json_saved_before_components_owned_their_keys_still_loads():
    """tests/data/config_flat_objective.json: written by the flat ObjectiveConfig (every key one field)."""
    from pathlib import Path

    from gptvariants.core.config import Config

    path = Path(__file__).parent / "data" / "config_flat_objective.json"
    saved = json.loads(path.read_text())
    cfg = load_config(file=path)
    assert cfg.to_dict() == saved  # the same keys and values, written back
    assert Config.from_dict(saved).objective.prior_sigma == 0.3
    assert (cfg.objective.variant, cfg.objective.reparam, cfg.objective.label_smoothing) == ("bayes-sig", "local", 0.2)


def test_a_key_declared_by_two_components_is_refused(monkeypatch):
    from dataclasses import dataclass

    from gptvariants.core.components import HEAD_SPECS, ComponentSpec
    from gptvariants.core.config import key

    @dataclass
    class ClashConfig:
        label_smoothing: float = key(0.0, Float())  # already the smooth objective's

    monkeypatch.setitem(HEAD_SPECS, "clash", ComponentSpec("clash", ClashConfig))
    with pytest.raises(ConfigError, match="config key label_smoothing is declared twice, by .*Config and .*Config"):
        load_config()


def test_a_saved_config_json_is_a_config_file(tmp_path):
    cfg = load_config("sig-pw", overrides={"n_layer": "3", "max_iters": "77", "learning_rate": "3e-4"})
    cfg.save(tmp_path / "config.json")
    again = load_config(file=tmp_path / "config.json")
    assert again.to_dict() == cfg.to_dict()
    assert load_config(file=tmp_path / "config.json", overrides={"max_iters": "5"}).train.max_iters == 5


# ----------------------------------------------------------------------------- resume from the run folder


def _saved_run(tmp_path, variant="smooth", **overrides):
    run = tmp_path / "run"
    run.mkdir()
    cfg = load_config(
        variant, overrides={"n_layer": "2", "bias": "false", "data": "rel/data", "out_dir": "runs/x", **overrides}
    )
    cfg.save(run / "config.json")
    (run / "data.json").write_text(json.dumps({"path": "/abs/data", "vocab_size": 65}))
    return run, cfg


def test_resume_takes_the_saved_config_and_the_recorded_data(tmp_path):
    from gptvariants.core.resume import resume_config

    run, saved = _saved_run(tmp_path)
    cfg = resume_config(run)
    assert cfg.objective.variant == "smooth" and cfg.model.n_layer == 2 and cfg.model.bias is False
    assert cfg.train.data == "/abs/data" and cfg.train.out_dir == str(run)
    # safe overrides apply; values equal to the saved ones are accepted whatever they are
    cfg = resume_config(
        run,
        variant="smooth",
        overrides={"max_iters": "9000", "learning_rate": "1e-4", "n_layer": "2", "data": "elsewhere"},
    )
    assert cfg.train.max_iters == 9000 and cfg.train.learning_rate == 1e-4 and cfg.train.data == "elsewhere"


def test_resume_refuses_what_the_checkpoint_fixes_with_the_reason(tmp_path):
    from gptvariants.core.resume import resume_config

    run, _ = _saved_run(tmp_path)
    with pytest.raises(ConfigError, match=r"variant \(saved 'smooth', asked 'baseline'\): a checkpoint continues with"):
        resume_config(run, variant="baseline")
    with pytest.raises(ConfigError, match=r"n_embd \(saved 128, asked 64\): it changes the model.s shape.*seed"):
        resume_config(run, overrides={"n_embd": "64", "seed": "1"})
    with pytest.raises(ConfigError, match="unknown config key 'n_layers'"):
        resume_config(run, overrides={"n_layers": "3"})
    (run / "config.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match=re.escape(f"{run / 'config.json'}: expected a JSON object, found list")):
        resume_config(run)


def test_accumulation_rounds_up_to_the_number_of_processes():
    from gptvariants.core.resume import fit_world_size

    cfg = load_config(overrides={"gradient_accumulation_steps": "1", "batch_size": "12"})
    assert fit_world_size(cfg, 1) is None and cfg.train.gradient_accumulation_steps == 1
    note = fit_world_size(cfg, 2)
    assert cfg.train.gradient_accumulation_steps == 2 and "rounded up to 2" in note and "24 sequences" in note
    cfg.train.gradient_accumulation_steps = 4
    assert fit_world_size(cfg, 2) is None and cfg.train.gradient_accumulation_steps == 4
    cfg.train.gradient_accumulation_steps = 5
    fit_world_size(cfg, 4)
    assert cfg.train.gradient_accumulation_steps == 8


# ----------------------------------------------------------------------------- model size against memory


@pytest.mark.parametrize("variant", list(REGISTRY))
@pytest.mark.parametrize("extra", [{}, {"bias": "false"}, {"tie_weights": "false"}, {"output_bias": "true"}])
def test_parameter_count_from_the_config_equals_the_model(variant, extra):
    from gptvariants.core.model import GPT
    from gptvariants.core.sizing import count_parameters

    cfg = load_config(variant, overrides={"n_layer": "2", "n_embd": "32", "n_head": "2", "block_size": "16", **extra})
    cfg.model.vocab_size = 50
    model = GPT(cfg.model, cfg.objective)
    assert count_parameters(cfg) == sum(p.numel() for p in model.parameters())


def test_a_model_that_cannot_fit_is_refused_before_allocating():
    from gptvariants.core.sizing import available_bytes, check_fits

    cfg = load_config(overrides={"n_layer": "1000", "n_embd": "65536", "n_head": "64"})
    with pytest.raises(
        ConfigError,
        match=r"51,540.5B parameters: training needs at least 768,012.8 GiB .* "
        r"but (cpu|cuda) has 1,024.0 GiB",
    ):
        check_fits(cfg, vocab_size=65, available=2**40)  # 1 TiB is not enough for 51.5e12 parameters
    check_fits(load_config(overrides={"size": "gpt2"}), vocab_size=50257, available=4 * 2**30)  # 124M x 16 B < 4 GiB
    assert available_bytes("cpu") > 0
