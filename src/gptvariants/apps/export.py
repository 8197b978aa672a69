"""``gptv export RUN OUT --format hf``: a run as a Hugging Face ``transformers`` folder.

The folder holds config.json, model.safetensors, generation_config.json, tokenizer.json with
tokenizer_config.json, and a README.md naming the run. It loads offline with

    AutoModelForCausalLM.from_pretrained(OUT)      # + trust_remote_code=True when the folder ships modeling code
    AutoTokenizer.from_pretrained(OUT)

and reproduces the run's predictive distribution:
- a softmax head without an output bias (baseline, smooth, bayes) is a plain GPT2LMHeadModel
  (Bayesian heads: the posterior mean of the weights, as ``gptv eval`` and sampling use by
  default; Monte-Carlo averaging over head draws has no place in a GPT-2 folder);
- any other head (the sigmoid variants, or a head with an output bias) ships
  ``modeling_gptvariants.py``: GPT-2 plus the output bias and the run's readout, whose
  ``logits`` are the log-probabilities of the predictive distribution (see that file), so
  softmax(logits) is the distribution and generation and lm-evaluation-harness work unchanged.
Every folder also ships ``custom_generate/generate.py`` (``hf_modeling/sliding_generate.py``):
loaded with ``trust_remote_code=True``, ``generate`` slides its window past block_size as ``gptv
sample`` does; a plain GPT-2 loaded without it stops at the context when no length is asked for
(transformers' default) and cannot go past it (its README says so).
The backbone maps one to one onto GPT-2 (Linear weights transposed into Conv1D; zero biases
where the run has none; gelu tanh -> ``gelu_new``, exact -> ``gelu``; n_positions = block_size).
The output layer is the head's own mapping (``Head.export_layer``), checked against the head's
logits. Refused, with the reason and before any file is written: an unknown format, a run
without a checkpoint, an OUT that is the run folder or is not empty (unless ``force``), a head
with no single GPT-2 output layer (an ensemble of heads), and a head whose distribution the
readouts do not reproduce.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .. import __version__
from ..common.errors import GptvError
from ..core.heads import ExportRefused
from ..core.hf_shape import META_KEY
from ..core.pretrained import CONV1D_WEIGHTS
from ..data.tokenizers import EOT_TEXT, load_tokenizer
from ..store.checkpoint import load_run
from ..store.run import RunFolder
from .hf_modeling import GENERATE_FILE, MODELING_FILE
from .options import FORMATS

MODELING = "modeling_gptvariants"
GENERATE = "custom_generate/generate.py"  # transformers' place for a folder's own generate (sliding window)
# every file an export may write: --force replaces these and leaves any other file alone
EXPORT_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    f"{MODELING}.py",
    GENERATE,
    "README.md",
)


class ExportError(GptvError, ValueError):
    """The run cannot be exported as asked; the message says why."""


def _require_transformers() -> None:
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise ExportError("gptv export needs transformers: pip install 'gptvariants[hf]'") from None


def output_layer(model) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """(W, b, note): the head's GPT-2 output layer (``Head.export_layer``), checked on random hidden
    states against the head's own point-estimate logits; ExportError with the reason otherwise."""
    head, name = model.head, model.obj_config.head
    try:
        w, b, note = head.export_layer()
    except ExportRefused as e:
        raise ExportError(f"cannot export the {name} head: {e}") from None
    h = torch.randn(8, w.shape[1], generator=torch.Generator().manual_seed(0)).to(w.device, w.dtype)
    with torch.no_grad():
        want = head.logits(h)
        got = F.linear(h, w, b).float()[None]
    if want.shape != got.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-5):
        raise ExportError(f"cannot export the {name} head: its export_layer does not give its logits")
    return w, b, note


def readout_of(model) -> dict[str, Any]:
    """{'readout': 'softmax' | 'sigmoid', 'set_draws': m, 'output_bias': bool, 'plain': bool}: how the
    exported model turns its head output into the run's predictive distribution; plain = a
    GPT2LMHeadModel reproduces it (softmax, no output bias).

    Checked on random head outputs against the run's own ``objective.log_probs``, so a head whose
    distribution the readouts do not reproduce is refused instead of exported wrong.
    """
    from .hf_modeling.modeling_gptvariants import readout_log_probs

    objective = model.objective
    readout = "sigmoid" if objective.sigmoid else "softmax"
    set_draws = int(getattr(objective, "set_draws", 1) or 1)
    z = 4 * torch.randn(8, model.config.vocab_size, generator=torch.Generator().manual_seed(0))
    err = (readout_log_probs(z, readout, set_draws) - objective.log_probs(z)).abs().max().item()
    if not err <= 1e-5:
        raise ExportError(
            f"cannot export {objective!r} exactly: its predictive distribution is not the "
            f"{readout} readout (max |log p difference| {err:.2e} on random logits)"
        )
    weight, bias, note = output_layer(model)
    return {
        "readout": readout,
        "set_draws": set_draws,
        "output_bias": bias is not None,
        "plain": readout == "softmax" and bias is None,
        "tied": weight is model.transformer.wte.weight,
        "note": note,
    }


def hf_state_dict(model, with_bias: bool) -> dict[str, torch.Tensor]:
    """GPT2LMHeadModel tensors of ``model``: Linear weights transposed into Conv1D's (in, out), zeros
    for the biases the run does not have, lm_head only when it is not the token embedding, and
    lm_head.bias (the head's, or zeros) when ``with_bias``."""
    sd: dict[str, torch.Tensor] = {}
    for name, module in model.transformer.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or name == "wte" or name == "wpe":
            continue
        w = weight.detach()
        sd[f"transformer.{name}.weight"] = w.t() if f"{name}.weight".endswith(CONV1D_WEIGHTS) else w
        bias = module.bias if module.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype)
        sd[f"transformer.{name}.bias"] = bias.detach()
    sd["transformer.wte.weight"] = model.transformer.wte.weight.detach()
    sd["transformer.wpe.weight"] = model.transformer.wpe.weight.detach()
    weight, bias, _ = output_layer(model)  # e.g. a Bayesian head's posterior mean
    if weight is not model.transformer.wte.weight:
        sd["lm_head.weight"] = weight.detach()
    if with_bias:
        sd["lm_head.bias"] = bias.detach() if bias is not None else torch.zeros(weight.shape[0], dtype=weight.dtype)
    return {k: v.float().cpu().contiguous() for k, v in sd.items()}


def _meta(cfg, readout: dict[str, Any], step: int | None, tokenizer, run_dir: Path) -> dict[str, Any]:

    what = {"softmax": "softmax(z)", "sigmoid": "q / sum(q), q = 1 - (1 - sigmoid(z))^(1/set_draws)"}[
        readout["readout"]
    ]
    if readout["note"]:
        what += f", z from {readout['note']}"
    return {
        "version": __version__,
        "run": run_dir.name,
        "step": step,
        "variant": cfg.objective.variant,
        "head": cfg.objective.head,
        "objective": cfg.objective.objective,
        "readout": readout["readout"],
        "set_draws": readout["set_draws"],
        "bias": cfg.model.bias,
        "output_bias": readout["output_bias"],
        "tokenizer": tokenizer.name,
        "predictive": f"p = {what}",
    }


def _config(cfg, meta: dict[str, Any], plain: bool, eot: int | None, tied: bool):
    from transformers import GPT2Config

    m = cfg.model
    kw = dict(
        vocab_size=m.vocab_size,
        n_positions=m.block_size,
        n_embd=m.n_embd,
        n_layer=m.n_layer,
        n_head=m.n_head,
        n_inner=None,
        activation_function="gelu_new" if m.gelu == "tanh" else "gelu",
        resid_pdrop=m.dropout,
        embd_pdrop=m.dropout,
        attn_pdrop=m.dropout,
        layer_norm_epsilon=1e-5,
        bos_token_id=eot,
        eos_token_id=eot,
        tie_word_embeddings=tied,  # the head's export layer is the token embedding
        **{META_KEY: meta},
    )
    if plain:
        return GPT2Config(architectures=["GPT2LMHeadModel"], **kw)
    from .hf_modeling.modeling_gptvariants import GPTVariantsConfig

    kw["auto_map"] = {
        "AutoConfig": f"{MODELING}.GPTVariantsConfig",
        "AutoModelForCausalLM": f"{MODELING}.GPTVariantsForCausalLM",
    }
    return GPTVariantsConfig(architectures=["GPTVariantsForCausalLM"], **kw)


def _write_tokenizer(tokenizer, folder: Path, block_size: int) -> None:
    tokenizer.to_hf().save(str(folder / "tokenizer.json"))
    conf: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        "model_max_length": block_size,
    }
    if tokenizer.eot_token is not None:
        conf.update(bos_token=EOT_TEXT, eos_token=EOT_TEXT)
    (folder / "tokenizer_config.json").write_text(json.dumps(conf, indent=2) + "\n", encoding="utf-8")


def _readme(meta: dict[str, Any], plain: bool, folder_name: str, block_size: int) -> str:
    remote = "" if plain else ", trust_remote_code=True"
    contract = (
        "a plain GPT-2 (GPT2LMHeadModel): softmax(logits) is the run's predictive distribution"
        if plain
        else f"GPT-2 with the run's output layer ({MODELING}.py, loaded with trust_remote_code=True); "
        "its logits are the log-probabilities of the run's predictive distribution, "
        "so softmax(logits) is that distribution"
    )
    return f"""# {meta["run"]}: gptvariants `{meta["variant"]}` (step {meta["step"]})

Exported by `gptv export` (gptvariants {meta["version"]}) as {contract}.

Predictive distribution: {meta["predictive"]}.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("{folder_name}"{remote})
tokenizer = AutoTokenizer.from_pretrained("{folder_name}"{remote})
```

Tokenizer: `{meta["tokenizer"]}`. config.json holds the run's settings under `{META_KEY}`.

## Generating past the context

The context is {block_size} tokens (the run's block_size; position embeddings are learned, so
there are no more positions). `generate` without a length stops there by itself.
{_past_context(plain, folder_name, block_size)}
"""


def _past_context(plain: bool, folder_name: str, block_size: int) -> str:
    """The export README's paragraph on generating more tokens than the context holds."""
    load = f'AutoModelForCausalLM.from_pretrained("{folder_name}", trust_remote_code=True)'
    slide = max(1, block_size // 4)  # gptv sample's default (decode/window.py)
    text = (
        f"Loaded with `trust_remote_code=True`, `generate` goes on past it, as `gptv sample` does: "
        f"`{GENERATE}` (shipped here, torch and transformers only) cuts the context to its last "
        f"{max(1, block_size - slide)} tokens whenever it is full and re-encodes them, every {slide + 1} "
        "tokens. Greedy and sampled decoding, logits processors and end-of-text work as usual; beam "
        "search, streamers and return_dict_in_generate are refused past the context. This needs a "
        "transformers that loads `custom_generate/` (added in 2025).\n\n"
        f"```python\nmodel = {load}\nmodel.generate(ids, max_new_tokens=4 * {block_size})\n```\n"
    )
    if plain:
        text += (
            "\nWithout `trust_remote_code`, this is transformers' own GPT2LMHeadModel, which cannot "
            f"go past position {block_size - 1}: keep `prompt length + max_new_tokens <= {block_size + 1}` "
            "(a longer request fails inside GPT-2 with `IndexError: index out of range in self`).\n"
        )
    return text


def export(
    run_dir: str | Path, out: str | Path, fmt: str = "hf", force: bool = False, say: Callable[[str], None] | None = None
) -> Path:
    """Write the run's current checkpoint to ``out`` in format ``fmt`` (only 'hf'); returns ``out``.

    ``force``: write into a non-empty ``out``, replacing the files an export writes (EXPORT_FILES)
    and leaving others. ``say`` hears each stage (``gptv export`` prints them). Raises ExportError
    (or CheckpointError for a missing checkpoint).
    """
    say = say or (lambda message: None)
    run_dir, out = Path(run_dir), Path(out)
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder")
    if out.exists() and run_dir.exists() and out.resolve() == run_dir.resolve():
        raise ExportError(f"{out} is the run folder itself: export into another folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(
            f"{out} exists and is not empty: choose another folder, or pass --force to replace the export files in it"
        )
    say("importing transformers")
    _require_transformers()
    say(f"loading {run_dir}")
    model, cfg = load_run(run_dir)
    try:
        tokenizer = load_tokenizer(run_dir)
    except (RuntimeError, FileNotFoundError) as e:
        raise ExportError(f"cannot export the tokenizer of {run_dir}: {e}") from None
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise ExportError(
            f"{run_dir}: the tokenizer has {tokenizer.vocab_size} ids but the model only {cfg.model.vocab_size}"
        )
    say("checking the head's output layer against its predictive distribution")
    readout = readout_of(model)
    step = RunFolder(run_dir).step
    meta = _meta(cfg, readout, step, tokenizer, run_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    os.mkdir(tmp)  # created under the umask, like every file below
    try:
        say(f"writing {', '.join(EXPORT_FILES[:3])} and the tokenizer")
        _write_folder(tmp, model, cfg, tokenizer, readout, meta, out.name)
        umask = _umask()
        for f in tmp.rglob("*"):  # safetensors writes 0600 whatever the umask; collaborators must read the folder
            f.chmod((0o777 if f.is_dir() else 0o666) & ~umask)
        if not out.exists():
            os.replace(tmp, out)
            return out
        for name in EXPORT_FILES:
            (out / name).unlink(missing_ok=True)
        for f in sorted(p for p in tmp.rglob("*") if p.is_file()):
            (out / f.relative_to(tmp)).parent.mkdir(exist_ok=True)
            os.replace(f, out / f.relative_to(tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def _write_folder(
    folder: Path, model, cfg, tokenizer, readout: dict[str, Any], meta: dict[str, Any], name: str
) -> None:
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    plain, eot = readout["plain"], tokenizer.eot_token
    save_file(hf_state_dict(model, with_bias=not plain), str(folder / "model.safetensors"), metadata={"format": "pt"})
    _config(cfg, meta, plain, eot, readout["tied"]).save_pretrained(str(folder))
    gen = {"bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot} if eot is not None else {}
    GenerationConfig(**gen).save_pretrained(str(folder))
    if not plain:
        shutil.copyfile(MODELING_FILE, folder / f"{MODELING}.py")
    (folder / GENERATE).parent.mkdir()
    shutil.copyfile(GENERATE_FILE, folder / GENERATE)
    _write_tokenizer(tokenizer, folder, cfg.model.block_size)
    (folder / "README.md").write_text(_readme(meta, plain, name, cfg.model.block_size), encoding="utf-8")
