import itertools

import numpy as np
import pytest

from gptvariants.data.synthetic import PRESETS, SyntheticLanguage


@pytest.fixture(scope="module")
def tiny():
    return SyntheticLanguage.random("tiny", seed=7)


def small_hmm() -> SyntheticLanguage:
    """3 states, 2 words + EOT, dense enough that every short stream has nonzero probability."""
    initial = np.array([0.6, 0.4, 0.0])
    transition = np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3], [0.3, 0.3, 0.4]])
    emission = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.45, 0.45, 0.1]])
    return SyntheticLanguage(initial, transition, emission, ["ka", "lo"], eot_token=2)


def brute_force_next_probs(lang: SyntheticLanguage, x: list[int]) -> np.ndarray:
    """p(x_{t+1} | x_{<=t}) by summing the joint over every hidden path (EOT resets the state)."""
    S, V = lang.emission.shape

    def joint(seq):
        total = 0.0
        for path in itertools.product(range(S), repeat=len(seq)):
            p = lang.initial[path[0]]
            for t, (z, tok) in enumerate(zip(path, seq)):
                if t > 0:
                    p *= lang.initial[z] if seq[t - 1] == lang.eot_token else lang.transition[path[t - 1], z]
                p *= lang.emission[z, tok]
            total += p
        return total

    rows = []
    for t in range(len(x)):
        j = np.array([joint(x[: t + 1] + [v]) for v in range(V)])
        rows.append(j / j.sum())
    return np.array(rows)


def test_forward_matches_brute_force():
    lang = small_hmm()
    x = [0, 1, 1, 2, 1, 0, 2]
    exact = brute_force_next_probs(lang, x)
    np.testing.assert_allclose(lang.next_token_probs(np.array(x)), exact, atol=1e-6)
    # chunk boundaries (also inside a document) must not change anything
    for chunk in (1, 2, 3):
        got = np.concatenate([p for _, p in lang.iter_next_token_probs(np.array(x), chunk=chunk)])
        np.testing.assert_allclose(got, exact, atol=1e-6)


def test_deterministic_from_seed(tiny):
    again = SyntheticLanguage.random("tiny", seed=7)
    other = SyntheticLanguage.random("tiny", seed=8)
    assert tiny.words == again.words and np.array_equal(tiny.emission, again.emission)
    assert not np.array_equal(tiny.transition, other.transition)
    a = tiny.sample(3000, np.random.default_rng(1))
    b = again.sample(3000, np.random.default_rng(1))
    assert np.array_equal(a, b)


def test_structure_is_sparse_and_covers_vocab(tiny):
    p = PRESETS["tiny"]
    assert tiny.vocab_size == p.n_words + 1 and tiny.n_states == p.n_states
    succ = (tiny.transition > 0).sum(1)
    assert succ.min() >= p.successors[0] and succ.max() <= p.successors[1]
    emitted = (tiny.emission[:, : tiny.eot_token] > 0).sum(1)
    assert emitted.min() >= p.emitted[0] and (tiny.emission[:, tiny.eot_token] > 0).all()
    assert (tiny.emission[:, : tiny.eot_token] > 0).any(0).all()  # every word can occur
    assert len(set(tiny.words)) == len(tiny.words) and all(w.isalpha() for w in tiny.words)


def test_sample_is_whole_documents(tiny):
    x = tiny.sample(5000, np.random.default_rng(0))
    assert len(x) >= 5000 and x[-1] == tiny.eot_token
    assert x.min() >= 0 and x.max() < tiny.vocab_size
    lengths = np.diff(np.flatnonzero(x == tiny.eot_token), prepend=-1)
    assert 30 < lengths.mean() < 300  # documents of ~100 words
    assert len(x) - lengths[-1] < 5000  # stops after the document that reaches n_tokens


def test_probs_rows_and_reset_after_eot(tiny):
    x = tiny.sample(4000, np.random.default_rng(3))
    probs = tiny.next_token_probs(x)
    assert probs.shape == (len(x), tiny.vocab_size) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    start_dist = tiny.initial @ tiny.emission
    eots = np.flatnonzero(x == tiny.eot_token)
    np.testing.assert_allclose(probs[eots], np.broadcast_to(start_dist, (len(eots), tiny.vocab_size)), atol=1e-6)
    # every observed next token was possible under the truth
    assert (probs[np.arange(len(x) - 1), x[1:]] > 0).all()
    # a word no start state emits cannot open a document
    bad = np.array([w for w in range(tiny.eot_token) if start_dist[w] == 0][:1])
    assert len(bad) == 1
    with pytest.raises(ValueError, match="probability 0"):
        tiny.next_token_probs(bad)


def test_entropy_rate_bounds_and_cross_entropy(tiny):
    x = tiny.sample(8000, np.random.default_rng(4))
    h = tiny.entropy_rate(x)
    assert 0.5 < h < np.log(tiny.vocab_size)
    # on its own samples the ideal model's cross-entropy estimates the entropy rate
    assert abs(tiny.cross_entropy(x) - h) < 0.1


def test_save_load_round_trip(tiny, tmp_path):
    tiny.save(tmp_path)
    assert not list(tmp_path.glob("*.pkl"))
    again = SyntheticLanguage.load(tmp_path)
    assert again.words == tiny.words and again.eot_token == tiny.eot_token
    for name in ("initial", "transition", "emission"):
        assert np.array_equal(getattr(again, name), getattr(tiny, name))
