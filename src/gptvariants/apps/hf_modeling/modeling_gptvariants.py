"""GPT-2 with a gptvariants output readout: the modeling code of a ``gptv export`` folder whose head
is not a plain softmax (sigmoid heads, or any head with an output bias).

    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)

Contract: ``model(input_ids).logits`` are the LOG-PROBABILITIES of the exported run's predictive
distribution, log p(v | x_<t), not raw scores, so softmax(logits) = p and everything built on
logits (``generate``, ``labels=`` loss and perplexity, lm-evaluation-harness) uses the run's own
distribution unchanged. With h the final hidden state and z = h W^T + b the head's output
(W tied to the token embedding unless ``tie_word_embeddings`` is false), ``config.gptvariants``
selects the readout:

    readout "softmax":  log p = log_softmax(z)
    readout "sigmoid":  log p_v = log q_v - log sum_u q_u,  q_v = 1 - (1 - s(z_v))^(1/m) = -expm1(logsigmoid(-z_v) / m)

where s is the logistic sigmoid and m = ``set_draws`` (m = 1 gives q = s(z), the normalised
sigmoid). The backbone is transformers' GPT-2; logits come back in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel


class GPTVariantsConfig(GPT2Config):
    """GPT-2's config under its own model type, so that loading without trust_remote_code fails
    instead of silently dropping the readout. ``gptvariants`` (a dict) holds readout and set_draws."""

    model_type = "gptvariants"


def readout_log_probs(z: torch.Tensor, readout: str, set_draws: int = 1) -> torch.Tensor:
    """log p(v | context) over the last dimension of the head output z (see the module docstring)."""
    z = z.float()
    if readout == "softmax":
        return torch.log_softmax(z, dim=-1)
    if readout != "sigmoid":
        raise ValueError(f"unknown readout {readout!r}: expected 'softmax' or 'sigmoid'")
    if set_draws == 1:
        log_q = F.logsigmoid(z)
    else:
        log_q = torch.log(-torch.expm1(F.logsigmoid(-z) / set_draws))
    return log_q - torch.logsumexp(log_q, dim=-1, keepdim=True)


class GPTVariantsForCausalLM(GPT2LMHeadModel):
    """GPT2LMHeadModel with an output bias and the readout of ``config.gptvariants``; ``logits`` are
    log-probabilities (the module docstring states the contract)."""

    config_class = GPTVariantsConfig

    def __init__(self, config: GPTVariantsConfig) -> None:
        super().__init__(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=True)
        self.post_init()
        meta = getattr(config, "gptvariants", None) or {}
        self.readout = meta.get("readout", "softmax")
        self.set_draws = int(meta.get("set_draws", 1))

    def forward(self, input_ids=None, *args, labels=None, return_dict=None, **kwargs):
        out = super().forward(input_ids, *args, **kwargs)  # out.logits = z, the head's raw output
        fields = dict(out)
        fields["logits"] = logits = readout_log_probs(out.logits, self.readout, self.set_draws)
        if labels is not None:  # -log p(next token); logsumexp(logits) = 0 so this is the cross-entropy
            labels = labels.to(logits.device)
            fields["loss"] = F.cross_entropy(
                logits[..., :-1, :].flatten(0, -2), labels[..., 1:].flatten(), ignore_index=-100
            )
        result = type(out)(**fields)
        return result.to_tuple() if return_dict is False else result
