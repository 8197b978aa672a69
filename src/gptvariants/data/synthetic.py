"""A synthetic language with a known ground truth: a sparse random hidden Markov model.

Each hidden state emits one of a few pseudo-words (or end-of-text) and moves to one of a
few successor states, so several next tokens are plausible at once and the exact
next-token distribution p(x_{t+1} | x_{<=t}) is computable by the forward algorithm.
That lets us score a model against the truth (KL, calibration, entropy rate) instead of
only against samples.

Generative process (per document): z_0 ~ initial; at each step the state z_t emits
x_t ~ emission[z_t]; if x_t is EOT the document ends and the next state is drawn from
`initial` again, otherwise z_{t+1} ~ transition[z_t].
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..common.checks import Int
from ..common.errors import InputError
from ..common.inputs import read_json, require

ARRAYS_FILE = "synthetic.safetensors"
WORDS_FILE = "synthetic.json"
SHIFT_PARTS = ("transition", "emission", "both")


@dataclass(frozen=True)
class SyntheticPreset:
    """Size and sparsity of a random HMM language and of the train/val streams sampled from it."""

    n_words: int  # vocabulary without EOT
    n_states: int
    train_tokens: int
    val_tokens: int
    successors: tuple[int, int] = (3, 6)  # inclusive range of successor states per state
    emitted: tuple[int, int] = (4, 12)  # inclusive range of words emitted per state
    initial_states: int = 4  # documents start in one of this many states
    eot_prob: float = 0.01  # mean per-token EOT probability -> documents ~100 words long
    alpha: float = 1.0  # Dirichlet concentration of the transition/emission weights


PRESETS: dict[str, SyntheticPreset] = {
    "tiny": SyntheticPreset(n_words=64, n_states=16, train_tokens=40_000, val_tokens=8_000),
    "default": SyntheticPreset(n_words=512, n_states=64, train_tokens=1_000_000, val_tokens=100_000),
}

_ONSETS = ["", "b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "tr", "st", "sh", "ch"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ou"]
_CODAS = ["", "", "", "n", "r", "s", "l", "m"]


def make_words(n: int, rng: np.random.Generator) -> list[str]:
    """n distinct pronounceable pseudo-words of 1-3 syllables (shorter words are more common)."""
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < n:
        n_syl = rng.choice([1, 2, 3], p=[0.3, 0.5, 0.2])
        w = "".join(
            _ONSETS[rng.integers(len(_ONSETS))]
            + _VOWELS[rng.integers(len(_VOWELS))]
            + _CODAS[rng.integers(len(_CODAS))]
            for _ in range(n_syl)
        )
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


@dataclass
class SyntheticLanguage:
    """A random HMM over words + EOT. Arrays are float64 with rows summing to 1.

    initial (S,), transition (S, S), emission (S, V) where V = len(words) + 1 and the last
    id, `eot_token`, is end-of-text.
    """

    initial: np.ndarray
    transition: np.ndarray
    emission: np.ndarray
    words: list[str]
    eot_token: int
    _tables: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        S, V = self.emission.shape
        if self.initial.shape != (S,) or self.transition.shape != (S, S) or V != len(self.words) + 1:
            raise ValueError("inconsistent HMM shapes")
        for name in ("initial", "transition", "emission"):
            a = getattr(self, name)
            if not np.allclose(a.sum(-1), 1.0):
                raise ValueError(f"{name} rows must sum to 1")

    @property
    def vocab_size(self) -> int:
        return self.emission.shape[1]

    @property
    def n_states(self) -> int:
        return self.emission.shape[0]

    @classmethod
    def random(cls, preset: SyntheticPreset | str = "default", seed: int = 1337) -> SyntheticLanguage:
        """Draw a random sparse HMM; deterministic given (preset, seed)."""
        p = PRESETS[preset] if isinstance(preset, str) else preset
        rng = np.random.default_rng(seed)
        S, W = p.n_states, p.n_words
        words = make_words(W, rng)

        initial = np.zeros(S)
        starts = rng.choice(S, size=min(p.initial_states, S), replace=False)
        initial[starts] = rng.dirichlet(np.full(len(starts), p.alpha))

        transition = np.zeros((S, S))
        for s in range(S):
            succ = rng.choice(S, size=rng.integers(p.successors[0], p.successors[1] + 1), replace=False)
            transition[s, succ] = rng.dirichlet(np.full(len(succ), p.alpha))

        # Deal a shuffled word list round-robin first so that every word is emitted by some
        # state, then top each state up to its drawn count with random extra words.
        emission = np.zeros((S, W + 1))
        owned: list[set[int]] = [set() for _ in range(S)]
        for i, w in enumerate(rng.permutation(W)):
            owned[i % S].add(int(w))
        for s in range(S):
            want = int(rng.integers(p.emitted[0], p.emitted[1] + 1))
            while len(owned[s]) < want:
                owned[s].add(int(rng.integers(W)))
            ws = np.array(sorted(owned[s]))
            # per-state EOT probability varies around the mean so endings carry some signal
            eot = p.eot_prob * rng.uniform(0.25, 1.75)
            emission[s, ws] = (1.0 - eot) * rng.dirichlet(np.full(len(ws), p.alpha))
            emission[s, W] = eot
        return cls(initial, transition, emission, words, eot_token=W)

    def shifted(self, strength: float, part: str = "both", seed: int = 0) -> SyntheticLanguage:
        """A sibling language on the same vocabulary whose exact distribution is known.

        With q a fresh random sparse HMM of the same size (states, words, the default preset's
        sparsity), drawn from ``seed``, the sibling mixes each table row-wise:
            transition' = (1 - s) transition + s q.transition   (part 'transition' or 'both')
            emission'   = (1 - s) emission   + s q.emission     (part 'emission' or 'both')
            initial'    = (1 - s) initial    + s q.initial      (part 'both')
        s = ``strength`` in [0, 1]: 0 is this language, 1 replaces the part entirely. The mixture
        of stochastic rows is stochastic, so the sibling is again an HMM (new dynamics: the
        hidden states move differently; new emissions: states say other words).
        """
        if not 0.0 <= strength <= 1.0:
            raise InputError(f"shift strength must be in [0, 1], got {strength}")
        if part not in SHIFT_PARTS:
            raise InputError(f"shift part must be one of {', '.join(SHIFT_PARTS)}, got {part!r}")
        preset = SyntheticPreset(n_words=len(self.words), n_states=self.n_states, train_tokens=0, val_tokens=0)
        q = SyntheticLanguage.random(preset, seed=seed)

        def mix(a: np.ndarray, b: np.ndarray, on: bool) -> np.ndarray:
            return (1.0 - strength) * a + strength * b if on else a.copy()

        return SyntheticLanguage(
            mix(self.initial, q.initial, part == "both"),
            mix(self.transition, q.transition, part in ("transition", "both")),
            mix(self.emission, q.emission, part in ("emission", "both")),
            list(self.words),
            self.eot_token,
        )

    # ------------------------------------------------------------------ sampling

    def _sampling_tables(self) -> tuple:
        """Padded sparse CDFs: for each row the nonzero ids and their cumulative probabilities."""
        if self._tables is None:

            def sparse_cdf(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                k = int((rows > 0).sum(-1).max())
                ids = np.zeros((len(rows), k), dtype=np.int64)
                cdf = np.ones((len(rows), k))  # padding cdf=1 is never selected (u < 1)
                for r, row in enumerate(rows):
                    nz = np.flatnonzero(row)
                    ids[r, : len(nz)] = nz
                    cdf[r, : len(nz)] = np.cumsum(row[nz])
                    cdf[r, len(nz) - 1] = 1.0  # guard against round-off leaving u above the last cdf
                return ids, cdf

            self._tables = (sparse_cdf(self.initial[None]), sparse_cdf(self.transition), sparse_cdf(self.emission))
        return self._tables

    def sample_documents(self, n_docs: int, rng: np.random.Generator) -> list[np.ndarray]:
        """Draw n_docs independent documents; each ends with EOT."""
        (init_ids, init_cdf), (tr_ids, tr_cdf), (em_ids, em_cdf) = self._sampling_tables()

        def draw(ids: np.ndarray, cdf: np.ndarray, rows: np.ndarray) -> np.ndarray:
            u = rng.random(len(rows))
            k = (u[:, None] >= cdf[rows]).sum(1)
            return ids[rows, k]

        # All documents advance in lock-step; finished ones drop out of `active`.
        state = draw(init_ids, init_cdf, np.zeros(n_docs, dtype=np.int64))
        active = np.arange(n_docs)
        columns: list[tuple[np.ndarray, np.ndarray]] = []  # (doc ids, tokens) per step
        while len(active):
            tok = draw(em_ids, em_cdf, state)
            columns.append((active, tok))
            going = tok != self.eot_token
            active, state = active[going], state[going]
            state = draw(tr_ids, tr_cdf, state)
        doc_of = np.concatenate([d for d, _ in columns])
        toks = np.concatenate([t for _, t in columns])
        # a stable sort by document keeps each document's tokens in step order
        order = np.argsort(doc_of, kind="stable")
        lengths = np.bincount(doc_of, minlength=n_docs)
        return np.split(toks[order], np.cumsum(lengths)[:-1])

    def sample(self, n_tokens: int, rng: np.random.Generator) -> np.ndarray:
        """A stream of i.i.d. whole documents, each ending with EOT: the shortest such stream
        with at least n_tokens tokens (so slightly longer than n_tokens). int64, shape (T,)."""
        docs: list[np.ndarray] = []
        total = 0
        while total < n_tokens:
            # expected document length is ~1/eot_prob; draw a bit more than needed per round
            mean_len = 1.0 / float(self.emission[:, self.eot_token].mean())
            batch = int(min(max(16, 1.2 * (n_tokens - total) / mean_len), 8192))
            for d in self.sample_documents(batch, rng):
                docs.append(d)
                total += len(d)
                if total >= n_tokens:
                    break
        return np.concatenate(docs)

    # ------------------------------------------------------------------ exact probabilities

    def _iter_beliefs(self, tokens: np.ndarray, chunk: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (start, b) with b[i] = p(z_{t+1} | x_{<=t}) for t = start + i (float64, (n, S)).

        Documents are independent given the reset after EOT, so within a chunk all document
        pieces are filtered in parallel: the Python loop runs over positions-within-document
        (~document length) rather than over every token.
        """
        tokens = np.asarray(tokens)
        if tokens.ndim != 1:
            raise ValueError("tokens must be a 1-D stream")
        if len(tokens) and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise InputError(f"token ids must be in [0, {self.vocab_size})")
        em_t = np.ascontiguousarray(self.emission.T)  # (V, S): likelihood of each token per state
        carry = self.initial.copy()  # belief about the state that emits the next token
        for start in range(0, len(tokens), chunk):
            x = tokens[start : start + chunk].astype(np.int64)
            n = len(x)
            # split the chunk into pieces that end after each EOT (or at the chunk end)
            ends = np.flatnonzero(x == self.eot_token) + 1
            if not len(ends) or ends[-1] != n:
                ends = np.append(ends, n)
            starts = np.concatenate([[0], ends[:-1]])
            lengths = ends - starts
            order = np.argsort(-lengths, kind="stable")  # longest first: active pieces are a prefix
            starts_sorted, lengths_sorted = starts[order], lengths[order]
            belief = np.tile(self.initial, (len(starts), 1))
            belief[np.flatnonzero(order == 0)[0]] = carry  # the first piece continues the previous chunk
            out = np.empty((n, self.n_states))
            for j in range(int(lengths_sorted[0])):
                m = int(np.searchsorted(-lengths_sorted, -j, side="left"))  # pieces with length > j
                pos = starts_sorted[:m] + j
                xj = x[pos]
                post = belief[:m] * em_t[xj]
                z = post.sum(1, keepdims=True)
                if not np.all(z > 0):
                    bad = start + int(pos[np.flatnonzero(z[:, 0] <= 0)[0]])
                    raise InputError(
                        f"token {int(tokens[bad])} at position {bad} has probability 0 under the HMM "
                        "(the stream must start at a document start and come from this language)"
                    )
                nxt = (post / z) @ self.transition
                nxt[xj == self.eot_token] = self.initial
                belief[:m] = nxt
                out[pos] = nxt
            carry = out[-1]
            yield start, out

    def iter_next_token_probs(self, tokens: np.ndarray, chunk: int = 16384) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (start, probs) with probs[i] = p(x_{t+1} | x_{<=t}) for t = start + i,
        float32 (n, V) with n <= chunk, so huge streams are never held as (T, V)."""
        # the beliefs are filtered in float64; the (n, S) @ (S, V) product is done in float32
        # (5x faster, and the result is float32 anyway)
        emission = self.emission.astype(np.float32)
        for start, belief in self._iter_beliefs(tokens, chunk):
            yield start, belief.astype(np.float32) @ emission

    def next_token_probs(self, tokens: np.ndarray) -> np.ndarray:
        """Exact p(x_{t+1} | x_{<=t}) for every position t of a stream that starts at a
        document start: float32 (T, V), row t is the distribution of the token after tokens[t]."""
        out = np.empty((len(tokens), self.vocab_size), dtype=np.float32)
        for start, probs in self.iter_next_token_probs(tokens):
            out[start : start + len(probs)] = probs
        return out

    def entropy_rate(self, tokens: np.ndarray) -> float:
        """Mean entropy (nats) of the true next-token distribution over the positions of the stream."""
        total, n = 0.0, 0
        for _, p in self.iter_next_token_probs(tokens):
            q = p[p > 0]  # rows are sparse: taking logs of the nonzeros only is much cheaper
            total += float(-(q * np.log(q)).sum(dtype=np.float64))
            n += len(p)
        return total / max(n, 1)

    def cross_entropy(self, tokens: np.ndarray) -> float:
        """Mean -log p(x_{t+1} | x_{<=t}) (nats) over t = 0..T-2: the loss of the ideal model."""
        tokens = np.asarray(tokens)
        total = 0.0
        for start, belief in self._iter_beliefs(tokens[:-1], 16384):
            nxt = tokens[start + 1 : start + 1 + len(belief)]
            p = np.einsum("ns,sn->n", belief, self.emission[:, nxt])
            total += float(-np.log(p).sum())
        return total / max(len(tokens) - 1, 1)

    # ------------------------------------------------------------------ persistence

    def save(self, dir: Path) -> None:
        """Write synthetic.safetensors (arrays) and synthetic.json (words, eot) into dir."""
        from safetensors.numpy import save_file

        dir = Path(dir)
        dir.mkdir(parents=True, exist_ok=True)
        arrays = {"initial": self.initial, "transition": self.transition, "emission": self.emission}
        save_file({k: np.ascontiguousarray(v, dtype=np.float64) for k, v in arrays.items()}, str(dir / ARRAYS_FILE))
        (dir / WORDS_FILE).write_text(json.dumps({"words": self.words, "eot_token": self.eot_token}) + "\n")

    @classmethod
    def load(cls, dir: Path) -> SyntheticLanguage:
        """Read what `save` wrote."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        dir = Path(dir)
        path = dir / ARRAYS_FILE
        try:
            arrays = load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise InputError(
                f"{path}: cannot be read ({e}); the file is damaged or cut short: re-run `gptv prepare`"
            ) from None
        missing = sorted({"initial", "transition", "emission"} - set(arrays))
        if missing:
            raise InputError(f"{path}: the arrays {missing} are missing; re-run `gptv prepare`")
        info = read_json(dir / WORDS_FILE)
        words = require(info, "words", _word_list, dir / WORDS_FILE)
        eot = require(info, "eot_token", Int(0, text=False), dir / WORDS_FILE)
        try:
            return cls(arrays["initial"], arrays["transition"], arrays["emission"], words, eot)
        except (ValueError, IndexError) as e:
            raise InputError(f"{path}: the arrays do not form a language ({e}); re-run `gptv prepare`") from None


def _word_list(value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(w, str) for w in value):
        raise ValueError("expected a list of strings")
    return value
