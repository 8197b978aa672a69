"""The model shape of a Hugging Face GPT-2 checkpoint (``init_from = gpt2 | ... | FOLDER``), without torch.

Config resolution reads it (``apply_hf_shape``) so that ``gptv train`` resolves and checks its
config before torch loads; the weights themselves are read by ``pretrained.py``. transformers is
an optional dependency, imported only when a checkpoint's config is read.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

from ..common.errors import GptvError

GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
GELU = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "exact"}
META_KEY = "gptvariants"  # config.json entry written by `gptv export`


class PretrainedError(GptvError, RuntimeError):
    """The pretrained weights cannot be obtained, or do not fit the model."""


def hint(name: str) -> str:
    return (
        f"could not load GPT-2 weights {name!r}: it is not a local folder and the weights could not be "
        f"downloaded from the Hugging Face Hub (offline, or no such model) nor found in its cache. "
        f"Pass a local folder saved with GPT2LMHeadModel.save_pretrained (config.json + weights), "
        f"or one of {', '.join(GPT2_NAMES)} with internet access"
    )


def hf_config(name_or_path: str):
    try:
        from transformers import GPT2Config
    except ImportError:
        raise PretrainedError("loading GPT-2 weights needs transformers: pip install 'gptvariants[hf]'") from None
    folder = Path(name_or_path)
    if folder.is_dir():  # read directly: a `gptv export` of a sigmoid run has its own model_type
        if not (folder / "config.json").is_file():
            raise PretrainedError(f"{folder} is not a Hugging Face GPT-2 folder: it has no config.json")
        try:
            return GPT2Config.from_json_file(str(folder / "config.json"))
        except (ValueError, TypeError) as e:
            raise PretrainedError(f"{folder / 'config.json'} is not a GPT-2 config: {e}") from None
    try:
        return GPT2Config.from_pretrained(name_or_path)
    except OSError as e:
        raise PretrainedError(hint(name_or_path)) from e


def hf_shape(name_or_path: str) -> dict[str, Any]:
    """The model config keys of a GPT-2 checkpoint: n_layer, n_head, n_embd, block_size (= n_positions),
    vocab_size, bias, tie_weights and gelu, to set before building a model for ``init_from``.

    bias is True (GPT-2 has biases) unless the folder is a ``gptv export`` of a run without them.
    """
    c = hf_config(name_or_path)
    if c.activation_function not in GELU:
        raise PretrainedError(f"{name_or_path}: activation {c.activation_function!r} is not GELU (ours: tanh or exact)")
    meta = getattr(c, META_KEY, None) or {}
    return {
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "n_embd": c.n_embd,
        "block_size": c.n_positions,
        "vocab_size": c.vocab_size,
        "bias": bool(meta.get("bias", True)),
        "tie_weights": bool(c.tie_word_embeddings),
        "gelu": GELU[c.activation_function],
    }


def apply_hf_shape(model_cfg, name_or_path: str, explicit: Collection[str] = ()) -> dict[str, Any]:
    """Set ``model_cfg``'s (a ModelConfig) shape keys from the checkpoint, except the keys in ``explicit``
    (given by the user: a smaller block_size crops the positions; a conflicting value is reported by
    ``load_gpt2_weights``). Returns the keys it set. For config resolution with ``init_from``."""
    applied = {k: v for k, v in hf_shape(name_or_path).items() if k not in explicit}
    for k, v in applied.items():
        setattr(model_cfg, k, v)
    return applied


def config_from_hf(name_or_path: str) -> dict[str, int]:
    """n_layer, n_head, n_embd, block_size (= n_positions) and vocab_size of a GPT-2 checkpoint
    (the integer part of ``hf_shape``)."""
    keys = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")
    return {k: v for k, v in hf_shape(name_or_path).items() if k in keys}
