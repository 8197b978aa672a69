"""Hugging Face GPT-2 weights load into the backbone and reproduce GPT-2's logits."""

import math

import pytest
import torch

from gptvariants.config import load_config
from gptvariants.model import GPT
from gptvariants.pretrained import PretrainedError, config_from_hf, load_gpt2_weights

transformers = pytest.importorskip("transformers")

V, N_POS = 100, 64



@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A small randomly initialised GPT2LMHeadModel saved the way from_pretrained reads it."""
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=N_POS, vocab_size=V, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg)
    with torch.no_grad():  # move the LayerNorms off their (1, 0) init so a swapped weight/bias would show
        for name, p in model.named_parameters():
            if ".ln_" in name:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
    out = tmp_path_factory.mktemp("hf-gpt2")
    model.save_pretrained(out)
    return out


def ours(variant: str, block_size: int = 48, **kw) -> GPT:
    cfg = load_config(variant, overrides={**dict(n_layer=2, n_head=2, n_embd=32, block_size=block_size, vocab_size=V), **kw})
    return GPT(cfg.model, cfg.objective).eval()


def hf_logits(hf_dir, x):
    model = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        return model(x).logits


def test_config_from_hf(hf_dir):
    assert config_from_hf(str(hf_dir)) == {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": N_POS, "vocab_size": V}


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
        assert torch.allclose(torch.nn.functional.softplus(model.head.weight_rho), torch.tensor(1e-3))


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
