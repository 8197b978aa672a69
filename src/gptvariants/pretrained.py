"""Start a model from Hugging Face GPT-2 weights (``init_from = gpt2 | gpt2-medium | ... | FOLDER``).

The backbone is GPT-2's architecture, so the weights map one to one, except that transformers
stores the attention and MLP projections as ``Conv1D`` modules whose weight is (in, out), the
transpose of ``nn.Linear``'s (out, in). The head's mean weight becomes GPT-2's lm_head (which is
tied to the token embedding); a Bayesian head's mu starts there with its configured sigma, and a
sigmoid head keeps its bias at -log V (GPT-2 has no output bias).

To match GPT-2 exactly set n_layer, n_head, n_embd and vocab_size from ``config_from_hf``,
block_size <= its n_positions (position embeddings are cropped), ``bias=True``,
``tie_weights=True`` and ``dropout=0`` for evaluation (GPT-2 itself trained with 0.1).
"""

from __future__ import annotations

from pathlib import Path

import torch

GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


class PretrainedError(RuntimeError):
    """The pretrained weights cannot be obtained, or do not fit the model."""


def _hint(name: str) -> str:
    return (f"could not load GPT-2 weights {name!r}: it is not a local folder and the weights could not be "
            f"downloaded from the Hugging Face Hub (offline, or no such model) nor found in its cache. "
            f"Pass a local folder saved with GPT2LMHeadModel.save_pretrained (config.json + weights), "
            f"or one of {', '.join(GPT2_NAMES)} with internet access")


def _hf_config(name_or_path: str):
    try:
        from transformers import GPT2Config
    except ImportError:
        raise PretrainedError("loading GPT-2 weights needs transformers: pip install 'gptvariants[hf]'") from None
    try:
        return GPT2Config.from_pretrained(name_or_path)
    except OSError as e:
        if Path(name_or_path).is_dir():
            raise PretrainedError(f"{name_or_path} is not a Hugging Face GPT-2 folder: {e}") from None
        raise PretrainedError(_hint(name_or_path)) from e


def config_from_hf(name_or_path: str) -> dict[str, int]:
    """n_layer, n_head, n_embd, block_size (= n_positions) and vocab_size of a GPT-2 checkpoint,
    to set as config keys before ``init_from``."""
    c = _hf_config(name_or_path)
    return {"n_layer": c.n_layer, "n_head": c.n_head, "n_embd": c.n_embd, "block_size": c.n_positions, "vocab_size": c.vocab_size}


def _check_fits(cfg, hf) -> None:
    problems = [f"{k} = {getattr(cfg, k)} (GPT-2: {getattr(hf, k)})" for k in ("n_layer", "n_head", "n_embd", "vocab_size")
                if getattr(cfg, k) != getattr(hf, k)]
    if cfg.block_size > hf.n_positions:
        problems.append(f"block_size = {cfg.block_size} (GPT-2 has {hf.n_positions} positions)")
    if not cfg.bias:
        problems.append("bias = False (GPT-2 has biases: set bias = true)")
    if hf.activation_function in ("gelu_new", "gelu_pytorch_tanh") and cfg.gelu != "tanh":
        problems.append("gelu = exact (GPT-2 uses the tanh approximation: set gelu = tanh)")
    elif hf.activation_function == "gelu" and cfg.gelu != "exact":
        problems.append("gelu = tanh (these weights use the exact GELU: set gelu = exact)")
    elif hf.activation_function not in ("gelu_new", "gelu_pytorch_tanh", "gelu"):
        problems.append(f"activation {hf.activation_function!r} (ours: GELU, tanh or exact)")
    # our blocks hard-code these GPT-2 defaults; a folder saved with others would not match
    if abs(hf.layer_norm_epsilon - 1e-5) > 1e-12 or getattr(hf, "scale_attn_by_inverse_layer_idx", False):
        problems.append("layer_norm_epsilon != 1e-5 or scale_attn_by_inverse_layer_idx")
    if problems:
        raise PretrainedError("the model config does not match the GPT-2 weights: " + "; ".join(problems)
                              + ". config_from_hf() gives the matching keys")


@torch.no_grad()
def load_gpt2_weights(model, name_or_path: str) -> None:
    """Copy Hugging Face GPT2LMHeadModel weights into ``model`` (a ``GPT``) in place.

    ``name_or_path``: gpt2 | gpt2-medium | gpt2-large | gpt2-xl (downloaded once into the
    Hugging Face cache) or a local folder. Raises PretrainedError when the weights cannot be
    obtained or the model's shape differs (the message names each mismatch).
    """
    hf_cfg = _hf_config(name_or_path)
    _check_fits(model.config, hf_cfg)
    from transformers import GPT2LMHeadModel

    try:
        sd = GPT2LMHeadModel.from_pretrained(name_or_path).state_dict()
    except OSError as e:
        raise PretrainedError(_hint(name_or_path)) from e
    block = model.config.block_size
    for name, p in model.transformer.named_parameters():
        src = sd[f"transformer.{name}"]
        if name.endswith(_CONV1D):
            src = src.t()
        if name == "wpe.weight":
            src = src[:block]
        if src.shape != p.shape:
            raise PretrainedError(f"{name}: GPT-2 has shape {tuple(src.shape)}, the model {tuple(p.shape)}")
        p.copy_(src)
    # the output layer: GPT-2 ties lm_head to wte; with tie_weights this copy is a no-op
    model.head.mean_weight.copy_(sd.get("lm_head.weight", sd["transformer.wte.weight"]))
