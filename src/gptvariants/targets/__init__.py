"""Teacher-built multi-label target sets for the sigmoid variants (Sig-GPT).

A sigmoid variant trains with BCE against a *set* of positive next tokens per position.
This module builds those sets with a teacher, either once for a whole dataset
(``build_targets`` / ``gptv targets``, read back by ``TokenDataset.open_sets``) or inside
the training loop (``build_online_teacher``, config key ``teacher``).

On disk, ``DATA/targets/NAME/`` holds
    {split}.bin         (n_tokens, k) uint16 (uint32 when V >= 65536); row i = candidates
                        for tokens[i+1], padded with the dtype's max value
    {split}.probs.bin   (n_tokens, k) float16 teacher probabilities of those ids (--store-probs)
    meta.json           written last: its presence marks the sets as complete

Row i holds the true next token tokens[i+1] plus, at a random fraction ``ratio`` of the
positions, the teacher's most probable other tokens (top-k, optionally cut to the nucleus
``top_p``, to probabilities >= ``min_prob`` and by the perplexity filter); at most k ids in
all, so when all k teacher candidates are kept and the true token is not among them, it
replaces the least probable one. The last row of a split has no next token and holds the
teacher set or nothing. This fixes the study's augmenter, which left the true token out and
scattered candidates onto the wrong positions.

The ``sample`` rule instead stores the distinct tokens among k - 1 draws from the teacher's
distribution, plus the true token. A sigmoid head trained on top-k sets learns set
membership, which no readout can turn back into p(v | context) (all confident candidates
look alike); on sampled sets membership is 1 - (1 - p_v)^k, which the head inverts
(``SigmoidBCE(set_draws=k)``; training sets ``set_draws`` from these sets' meta.json).

Teacher specs:
    hf:NAME_OR_PATH   a Hugging Face causal LM (the study used gpt2), same vocabulary as the data
    ckpt:RUN          a gptvariants run folder (its current checkpoint)
    ngram:N           interpolated Kneser-Ney N-gram model fitted on the train split
    oracle            the exact next-token distribution of the synthetic language

The package: base.py (the teacher interface), teachers.py and ngram.py (the teachers),
selection.py (the rules), build.py (the cached build), online.py (sets in the training
loop). `gptv targets` is apps/cli/targets.py.
"""

from .base import ALTERNATIVES, TOKENS_PER_FORWARD, Teacher, WindowedTeacher, parse_spec
from .build import FORMAT, PROGRESS_FILE, build_targets
from .ngram import NgramTeacher
from .online import build_online_teacher
from .selection import ORACLE_MIN_PROB, readout_draws, sample_set, select
from .teachers import CheckpointTeacher, HFTeacher, OracleTeacher, load_teacher

__all__ = [
    "ALTERNATIVES",
    "FORMAT",
    "ORACLE_MIN_PROB",
    "PROGRESS_FILE",
    "TOKENS_PER_FORWARD",
    "CheckpointTeacher",
    "HFTeacher",
    "NgramTeacher",
    "OracleTeacher",
    "Teacher",
    "WindowedTeacher",
    "build_online_teacher",
    "build_targets",
    "load_teacher",
    "parse_spec",
    "readout_draws",
    "sample_set",
    "select",
]
