"""Start a model from Hugging Face GPT-2 weights (``init_from = gpt2 | gpt2-medium | ... | FOLDER``).

The backbone is GPT-2's architecture, so the weights map one to one, except that transformers
stores the attention and MLP projections as ``Conv1D`` modules whose weight is (in, out), the
transpose of ``nn.Linear``'s (out, in). The head's mean weight becomes GPT-2's lm_head (tied to
the token embedding unless the folder says ``tie_word_embeddings = false``); a Bayesian head's mu
starts there with its configured sigma. A sigmoid head takes the folder's output bias when it
has one (a ``gptv export`` of a sigmoid run), otherwise keeps its bias at -log V (GPT-2 has none);
a head without a bias ignores the folder's.

``hf_shape(folder)`` (hf_shape.py) gives the config keys that make the model fit the weights (n_layer, n_head,
n_embd, block_size, vocab_size, bias, tie_weights, gelu); block_size may be set smaller
(position embeddings are cropped) and ``dropout=0`` suits evaluation (GPT-2 trained with 0.1).

Weights are read from safetensors files, or from a ``pytorch_model.bin`` with
``torch.load(weights_only=True)``: no pickled code is ever executed.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch

from .hf_shape import GELU, PretrainedError, hf_config, hint

# transformers keeps these as Conv1D weights, (in, out): the transpose of nn.Linear's (out, in)
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _check_fits(cfg, hf) -> None:
    problems = [
        f"{k} = {getattr(cfg, k)} (GPT-2: {getattr(hf, k)})"
        for k in ("n_layer", "n_head", "n_embd", "vocab_size")
        if getattr(cfg, k) != getattr(hf, k)
    ]
    if cfg.block_size > hf.n_positions:
        problems.append(f"block_size = {cfg.block_size} (GPT-2 has {hf.n_positions} positions)")
    gelu = GELU.get(hf.activation_function)
    if gelu is None:
        problems.append(f"activation {hf.activation_function!r} (ours: GELU, tanh or exact)")
    elif cfg.gelu != gelu:
        problems.append(f"gelu = {cfg.gelu} (these weights use gelu = {gelu})")
    if cfg.tie_weights and not hf.tie_word_embeddings:
        problems.append("tie_weights = True (these weights have a separate lm_head: set tie_weights = false)")
    if hf.n_inner not in (None, 4 * hf.n_embd):
        problems.append(f"n_inner = {hf.n_inner} (ours: 4 * n_embd)")
    # our blocks hard-code these GPT-2 defaults; a folder saved with others would not match
    if (
        abs(hf.layer_norm_epsilon - 1e-5) > 1e-12
        or getattr(hf, "scale_attn_by_inverse_layer_idx", False)
        or not getattr(hf, "scale_attn_weights", True)
    ):
        problems.append("layer_norm_epsilon != 1e-5, scale_attn_by_inverse_layer_idx or not scale_attn_weights")
    if problems:
        raise PretrainedError(
            "the model config does not match the GPT-2 weights: "
            + "; ".join(problems)
            + ". hf_shape() gives the matching keys"
        )


def _folder(name_or_path: str) -> Path:
    """A local folder, or the Hub snapshot of a model name (its config and safetensors weights)."""
    folder = Path(name_or_path)
    if folder.is_dir():
        return folder
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name_or_path, allow_patterns=["*.json", "*.safetensors"]))
    except Exception as e:  # offline, no such repository, or a network error
        raise PretrainedError(hint(name_or_path)) from e


def read_weights(name_or_path: str) -> dict[str, torch.Tensor]:
    """The tensors of a Hugging Face checkpoint, keys without the ``transformer.`` prefix (GPT-2's own
    hub files have none). safetensors (single or sharded); else pytorch_model.bin read with
    ``torch.load(weights_only=True)``, refused in one line when it holds pickled objects."""
    from safetensors.torch import load_file

    folder = _folder(name_or_path)
    index = folder / "model.safetensors.index.json"
    files = [folder / "model.safetensors"]
    if index.is_file():
        files = [folder / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    sd: dict[str, torch.Tensor] = {}
    if all(f.is_file() for f in files):
        for f in files:
            sd.update(load_file(str(f)))
    elif (folder / "pytorch_model.bin").is_file():
        path = folder / "pytorch_model.bin"
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise PretrainedError(
                f"{path} holds pickled objects besides tensors and gptvariants never runs pickled "
                "code: convert it to model.safetensors with a tool you trust "
                "(save_pretrained(safe_serialization=True))"
            ) from None
    else:
        raise PretrainedError(f"{folder} holds no weights (model.safetensors, its shards, or pytorch_model.bin)")
    return {k.removeprefix("transformer."): v for k, v in sd.items()}


@torch.no_grad()
def load_gpt2_weights(model, name_or_path: str) -> None:
    """Copy Hugging Face GPT2LMHeadModel weights into ``model`` (a ``GPT``) in place.

    ``name_or_path``: gpt2 | gpt2-medium | gpt2-large | gpt2-xl (downloaded once into the
    Hugging Face cache) or a local folder. Raises PretrainedError when the weights cannot be
    obtained or the model's shape differs (the message names each mismatch). A model with
    ``bias = False`` takes weights whose biases are all zero (a ``gptv export`` of such a run).
    """
    hf_cfg = hf_config(name_or_path)
    cfg = model.config
    _check_fits(cfg, hf_cfg)
    sd = read_weights(name_or_path)
    if not cfg.bias:
        nonzero = [k for k, v in sd.items() if k.endswith(".bias") and k.startswith(("h.", "ln_f.")) and v.any()]
        if nonzero:
            raise PretrainedError(
                f"bias = False but the weights have non-zero biases ({nonzero[0]}, ...): set bias = true"
            )
    for name, p in model.transformer.named_parameters():
        if name not in sd:
            raise PretrainedError(f"{name_or_path}: the weights have no {name}")
        src = sd[name]
        if name.endswith(CONV1D_WEIGHTS):
            src = src.t()
        if name == "wpe.weight":
            src = src[: cfg.block_size]
        if src.shape != p.shape:
            raise PretrainedError(f"{name}: GPT-2 has shape {tuple(src.shape)}, the model {tuple(p.shape)}")
        p.copy_(src)
    # the output layer: with tie_weights this copy is a no-op (lm_head is wte)
    head = model.head
    head.mean_weight.copy_(sd.get("lm_head.weight", sd["wte.weight"]))
    _, bias = head.weights(sample=False)  # the bias parameter (a Bayesian head's mean)
    if bias is not None and "lm_head.bias" in sd:
        bias.copy_(sd["lm_head.bias"])
