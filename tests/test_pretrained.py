"""Hugging Face GPT-2 weights load into the backbone and reproduce GPT-2's logits."""

import math

import pytest
import torch

from gptvariants.core.config import load_config
from gptvariants.core.hf_shape import PretrainedError, apply_hf_shape, config_from_hf, hf_shape
from gptvariants.core.model import GPT
from gptvariants.core.pretrained import load_gpt2_weights

transformers = pytest.importorskip("transformers")

V, N_POS = 100, 64


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A small randomly initialised GPT2LMHeadModel saved the way from_pretrained reads it."""
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        n_layer=2, n_head=2, n_embd=32, n_positions=N_POS, vocab_size=V, bos_token_id=0, eos_token_id=0
    )
    model = transformers.GPT2LMHeadModel(cfg)
    with torch.no_grad():  # move the LayerNorms off their (1, 0) init so a swapped weight/bias would show
        for name, p in model.named_parameters():
            if ".ln_" in name:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
    out = tmp_path_factory.mktemp("hf-gpt2")
    model.save_pretrained(out)
    return out


def ours(variant: str, block_size: int = 48, **kw) -> GPT:
    shape = dict(n_layer=2, n_head=2, n_embd=32, block_size=block_size, vocab_size=V)
    cfg = load_config(variant, overrides={**shape, **kw})
    return GPT(cfg.model, cfg.objective).eval()


def hf_logits(hf_dir, x):
    model = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        return model(x).logits


def test_config_from_hf(hf_dir):
    expected = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": N_POS, "vocab_size": V}
    assert config_from_hf(str(hf_dir)) == expected


@pytest.mark.parametrize("variant", ["baseline", "bayes", "sig"])
def test_loaded_model_gives_gpt2_logits(hf_dir, variant):
    x = torch.randint(0, V, (2, 40), generator=torch.Generator().manual_seed(0))
    expected = hf_logits(hf_dir, x)
    model = ours(variant)  # block_size 48 < 64 positions: wpe is cropped
    load_gpt2_weights(model, str(hf_dir))
    with torch.no_grad():
        got = model.logits(model.transformer(x))
    if variant == "sig":  # the sigmoid head keeps its bias at -log V on top of GPT-2's logits
        assert torch.allclose(model.head.bias, torch.full((V,), -math.log(V)))
        got = got + math.log(V)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    if variant == "bayes":  # mu starts at lm_head; sigma stays at its initial value
        assert torch.equal(model.head.weight_mu, model.transformer.wte.weight)
        assert torch.allclose(torch.nn.functional.softplus(model.head.weight_rho), torch.tensor(0.01))


def test_untied_head_gets_the_lm_head_too(hf_dir):
    model = ours("baseline", tie_weights=False)
    load_gpt2_weights(model, str(hf_dir))
    assert torch.equal(model.head.weight, model.transformer.wte.weight)


def test_mismatched_config_is_a_clear_error(hf_dir):
    with pytest.raises(PretrainedError, match=r"n_layer = 3 \(GPT-2: 2\).*block_size = 128"):
        load_gpt2_weights(ours("baseline", block_size=128, n_layer=3), str(hf_dir))
    with pytest.raises(PretrainedError, match="bias = False"):
        load_gpt2_weights(ours("baseline", bias=False), str(hf_dir))


def test_offline_name_without_cache_is_a_clear_error(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    with pytest.raises(PretrainedError, match="could not be downloaded.*local folder"):
        load_gpt2_weights(ours("baseline"), "gpt2")


def test_hf_shape_reads_every_shape_key(hf_dir, tmp_path):
    assert hf_shape(str(hf_dir)) == {
        "n_layer": 2,
        "n_head": 2,
        "n_embd": 32,
        "block_size": N_POS,
        "vocab_size": V,
        "bias": True,
        "tie_weights": True,
        "gelu": "tanh",
    }
    cfg = transformers.GPT2Config(
        n_layer=1,
        n_head=2,
        n_embd=16,
        n_positions=8,
        vocab_size=50,
        activation_function="gelu",
        tie_word_embeddings=False,
    )
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path)
    assert hf_shape(str(tmp_path)) == {
        "n_layer": 1,
        "n_head": 2,
        "n_embd": 16,
        "block_size": 8,
        "vocab_size": 50,
        "bias": True,
        "tie_weights": False,
        "gelu": "exact",
    }
    # the shape is all a model needs to take the weights
    model = ours("baseline", **{k: v for k, v in hf_shape(str(tmp_path)).items()})
    load_gpt2_weights(model, str(tmp_path))
    x = torch.randint(0, 50, (1, 8))
    with torch.no_grad():
        expected = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()(x).logits
        torch.testing.assert_close(model.logits(model.transformer(x)), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(PretrainedError, match="tie_weights = True"):
        load_gpt2_weights(ours("baseline", **{**hf_shape(str(tmp_path)), "tie_weights": True}), str(tmp_path))


def _as_bin(hf_dir, tmp_path, extra=None):
    """The folder with its weights as a pickled pytorch_model.bin (how older transformers saved them)."""
    from safetensors.torch import load_file

    tmp_path.mkdir()
    (tmp_path / "config.json").write_text((hf_dir / "config.json").read_text())
    sd = load_file(str(hf_dir / "model.safetensors"))
    torch.save({**sd, **(extra or {})}, tmp_path / "pytorch_model.bin")
    return tmp_path


class _Executes:
    def __reduce__(self):
        return (print, ("this ran at load time",))


def test_pytorch_model_bin_loads_without_running_pickled_code(hf_dir, tmp_path, capsys):
    model = ours("baseline")
    load_gpt2_weights(model, str(_as_bin(hf_dir, tmp_path / "plain")))  # tensors only: fine
    reference = ours("baseline")
    load_gpt2_weights(reference, str(hf_dir))
    assert torch.equal(model.transformer.h[1].mlp.c_fc.weight, reference.transformer.h[1].mlp.c_fc.weight)
    with pytest.raises(PretrainedError, match="pickled objects.*model.safetensors") as e:
        load_gpt2_weights(ours("baseline"), str(_as_bin(hf_dir, tmp_path / "code", {"x": _Executes()})))
    assert "\n" not in str(e.value) and "ran at load time" not in capsys.readouterr().out
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "config.json").write_text((hf_dir / "config.json").read_text())
    with pytest.raises(PretrainedError, match="holds no weights"):
        load_gpt2_weights(ours("baseline"), str(tmp_path / "none"))


def test_bias_false_takes_zero_biases_only(hf_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    sd = load_file(str(hf_dir / "model.safetensors"))
    zeroed = {k: (torch.zeros_like(v) if k.endswith(".bias") else v) for k, v in sd.items()}
    (tmp_path / "config.json").write_text((hf_dir / "config.json").read_text())
    save_file(zeroed, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    model = ours("baseline", bias=False)
    load_gpt2_weights(model, str(tmp_path))
    assert torch.equal(model.transformer.ln_f.weight, sd["transformer.ln_f.weight"])


def test_apply_hf_shape_keeps_explicit_keys(hf_dir):
    cfg = load_config("baseline", overrides={"block_size": 16, "n_layer": 7})
    applied = apply_hf_shape(cfg.model, str(hf_dir), explicit={"block_size"})
    assert "block_size" not in applied and cfg.model.block_size == 16  # cropped positions: allowed
    assert (cfg.model.n_layer, cfg.model.n_embd, cfg.model.vocab_size, cfg.model.bias) == (2, 32, V, True)
    model = GPT(cfg.model, cfg.objective)
    load_gpt2_weights(model, str(hf_dir))
