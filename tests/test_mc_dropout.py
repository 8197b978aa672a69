"""MC dropout at the cost of its passes: masks drawn in bulk (``model.bulk_dropout``), attention
with dropout outside torch's CPU fallback, and the S passes batched; equal in distribution to
the explicit passes of ``nn.Dropout`` and SDPA's dropout_p."""

import pytest
import torch
import torch.nn.functional as F

from gptvariants.core.config import load_config
from gptvariants.core.model import GPT, attention_with_dropout, bulk_dropout
from gptvariants.predict.predictive import Predictor


def test_bulk_dropout_keeps_one_minus_p_and_rescales():
    torch.manual_seed(0)
    x = torch.full((200_000,), 2.0)
    y = bulk_dropout(x, 0.3)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.005
    assert torch.allclose(y[kept], torch.tensor(2.0 / 0.7))


@pytest.mark.parametrize("case", ["causal", "mask", "none"])
def test_attention_without_drops_equals_sdpa(case):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=g) for _ in range(3))
    mask = torch.rand(2, 1, 5, 5, generator=g) > 0.3 if case == "mask" else None
    if mask is not None:
        mask[..., 0] = True  # every query attends somewhere
    causal = case == "causal"
    got = attention_with_dropout(q, k, v, mask, causal, 0.0)  # u >= 0 always: nothing dropped
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    assert torch.allclose(got, want, atol=1e-6)


def _model(dropout: float = 0.3) -> GPT:
    torch.manual_seed(0)
    cfg = load_config(
        "baseline", overrides=dict(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=11, dropout=dropout)
    )
    model = GPT(cfg.model, cfg.objective).eval()
    for w in model.parameters():  # far from GPT-2's small init, so that dropout moves p visibly
        if w.dim() == 2:
            torch.nn.init.normal_(w, std=0.4)
    return model


def test_batched_bulk_passes_equal_the_explicit_passes_in_distribution():
    """The first two moments over many draws of the predictive p(v | x) agree with those of explicit
    passes through nn.Dropout and SDPA's dropout_p, within 5 standard errors at every position."""
    model, n = _model(), 1500
    x = torch.tensor([[1, 4, 2, 7, 3, 9]])
    predictor = Predictor([model], samples=0, dropout_samples=n, seed=0)
    with torch.no_grad():
        batched = torch.stack([model.logits(h[0]).softmax(-1) for h in predictor.encode(x)])
        torch.manual_seed(1)
        model.transformer.train()
        explicit = torch.stack([model.logits(model.transformer(x)[0]).softmax(-1) for _ in range(n)])
        model.transformer.eval()
    for moment in (1, 2):  # the mean and the second moment, each within 5 standard errors
        a, b = batched**moment, explicit**moment
        z = (a.mean(0) - b.mean(0)).abs() / ((a.var(0) + b.var(0)) / n).sqrt()
        assert z.max() < 5, (moment, z.max())
    assert explicit.std(0).max() > 0.01  # the draws do differ: the test can tell distributions apart


def test_passes_split_by_the_memory_budget_are_reproducible():
    model = _model()
    x = torch.tensor([[1, 4, 2], [3, 3, 5]])
    a = Predictor([model], samples=0, dropout_samples=5, seed=3)
    b = Predictor([model], samples=0, dropout_samples=5, seed=3)
    one = a._dropout_passes(model, x)  # one forward pass of 5 copies
    split = a._dropout_passes(model, x, budget=1)  # 5 passes of one copy
    assert len(one) == len(split) == 5 and one[0].shape == (2, 3, 16)
    assert all(torch.equal(u, v) for u, v in zip(one, b._dropout_passes(model, x), strict=True))
    assert not torch.equal(one[0], one[1])  # copies within a pass draw their own masks
    assert not model.transformer.training and not model.transformer.h[0].attn.bulk  # restored


def test_dropout_zero_paths_keep_sdpa_and_their_numbers():
    model = _model(dropout=0.0)
    x = torch.tensor([[1, 4, 2, 7]])
    with torch.no_grad():
        ref = model.transformer(x)
        with model.transformer.mc_dropout():
            assert torch.equal(model.transformer(x), ref)


def test_passes_are_read_out_together_as_each_alone():
    """``Predictor.draws`` reads a member's MC dropout passes out as one matmul: the draws are
    those of each pass read out alone, in pass order (a Bayesian head's S draws per pass)."""
    model = _model()
    x = torch.tensor([[1, 4, 2, 7]])
    predictor = Predictor([model], samples=0, dropout_samples=3, seed=0)
    hs = [h[0] for h in predictor.encode(x)]
    got = predictor.draws(hs).log_ps
    want = torch.cat([model.logits(h).log_softmax(-1)[None] for h in hs])
    assert got.shape == (3, 4, 11) and torch.allclose(got, want, atol=1e-6)
    torch.manual_seed(0)  # a posterior of width ~0: each pass's S = 2 draws are its mean's logits
    shape = dict(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=11, dropout=0.3)
    cfg = load_config("bayes", overrides={**shape, "posterior_sigma_init": 1e-9})
    bayes = GPT(cfg.model, cfg.objective).eval()
    p = Predictor([bayes], samples=2, dropout_samples=3, seed=0)
    hs = [h[0] for h in p.encode(x)]
    got = p.draws(hs).log_ps
    want = torch.cat([bayes.logits(h).log_softmax(-1)[None].expand(2, -1, -1) for h in hs])
    assert got.shape == (6, 4, 11) and torch.allclose(got, want, atol=1e-5)
