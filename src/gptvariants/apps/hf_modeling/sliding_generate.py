"""Generation past the context for a ``gptv export`` folder, shipped as ``custom_generate/generate.py``.

    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    model.generate(ids, max_new_tokens=1000)  # any length; the window slides as in `gptv sample`

transformers (with ``trust_remote_code=True``) makes this module's ``generate`` the model's
``generate``. Position embeddings are absolute (0 .. n_positions-1), so the context cannot grow
past n_positions; the policy is gptvariants' own (``decode/window.py``): a prompt keeps its last
n_positions tokens; the context grows one token per step; when the next token would make it
longer than n_positions it restarts with its last keep = n_positions - slide tokens (slide =
n_positions // 4), re-encoded from position 0. Each stretch between two slides is one call of
transformers' own ``generate`` on the window, so sampling, logits processors and end-of-text
stopping work unchanged; a call that stays inside the context is that ``generate`` untouched.
Rows that ended (end-of-text) stay padded. This file imports only torch and transformers.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import GenerationMixin

# options whose meaning spans the whole output, which stitched windows cannot give
UNSUPPORTED = ("streamer", "assistant_model", "return_dict_in_generate", "num_beams", "num_return_sequences")


def keep_tokens(n_positions: int) -> int:
    """Tokens kept when the window slides: n_positions - n_positions // 4 (at least 1)."""
    return max(1, n_positions - max(1, n_positions // 4))


def _requested(n_in: int, kwargs: dict[str, Any]) -> int | None:
    """New tokens the caller asked for (max_new_tokens, else max_length - prompt); None: transformers' default."""
    config = kwargs.get("generation_config")
    if kwargs.get("max_new_tokens") is not None:
        return int(kwargs["max_new_tokens"])
    if kwargs.get("max_length") is not None:
        return int(kwargs["max_length"]) - n_in
    if config is not None and config.max_new_tokens is not None:
        return int(config.max_new_tokens)
    return None


def _option(name: str, kwargs: dict[str, Any], model) -> Any:
    """An option from the call, else its generation_config, else the model's."""
    if kwargs.get(name) is not None:
        return kwargs[name]
    config = kwargs.get("generation_config") or model.generation_config
    return getattr(config, name, None)


def _check_supported(kwargs: dict[str, Any], model, n_positions: int) -> None:
    for name in UNSUPPORTED:
        value = _option(name, kwargs, model)
        if value not in (None, False, 1):
            raise ValueError(
                f"generating past the context ({n_positions} tokens) slides the window and does not support "
                f"{name}={value!r}; stay within the context or leave {name} unset"
            )


def generate(*args: Any, model, **kwargs: Any) -> torch.Tensor:
    """transformers' ``generate`` with gptvariants' sliding window past n_positions (module docstring)."""
    ids = args[0] if args else kwargs.pop("inputs", None)
    ids = kwargs.pop("input_ids", None) if ids is None else ids
    n_positions = int(model.config.n_positions)
    new = _requested(ids.shape[1], kwargs)
    if new is None or new <= 0 or ids.shape[1] + new - 1 <= n_positions:  # fits: transformers' own generate
        return GenerationMixin.generate(model, ids, *args[1:], **kwargs)
    _check_supported(kwargs, model, n_positions)
    for name in ("max_length", "max_new_tokens", "min_length"):
        kwargs.pop(name, None)  # replaced by each stretch's own
    min_new = int(kwargs.pop("min_new_tokens", None) or 0)
    mask = kwargs.pop("attention_mask", None)
    eos = _option("eos_token_id", kwargs, model)
    eos = torch.tensor([] if eos is None else eos, dtype=ids.dtype, device=ids.device).reshape(-1)
    pad = _option("pad_token_id", kwargs, model)
    pad = int(eos[0]) if pad is None and len(eos) else pad
    keep = keep_tokens(n_positions)
    out, start, done = ids, max(0, ids.shape[1] - n_positions), torch.zeros(len(ids), dtype=torch.bool)
    done = done.to(ids.device)
    while new > 0 and not bool(done.all()):
        if out.shape[1] - start > n_positions:
            start = out.shape[1] - keep
        window = out[:, start:]
        step = min(new, n_positions - window.shape[1] + 1)
        extra = {"attention_mask": mask[:, start:]} if mask is not None else {}
        if min_new:
            extra["min_new_tokens"] = min(step, min_new)
        seq = GenerationMixin.generate(model, window, max_new_tokens=step, **extra, **kwargs)
        tokens = seq[:, window.shape[1] :]
        if pad is not None:
            tokens = torch.where(done[:, None], torch.full_like(tokens, pad), tokens)
        done |= torch.isin(tokens, eos).any(dim=1)
        out = torch.cat([out, tokens], dim=1)
        if mask is not None:
            mask = torch.cat([mask, torch.ones_like(tokens, dtype=mask.dtype)], dim=1)
        new, min_new = new - tokens.shape[1], max(0, min_new - tokens.shape[1])
        if tokens.shape[1] < step:  # transformers stopped early (end-of-text in every row, a stop string, max_time)
            break
    return out
