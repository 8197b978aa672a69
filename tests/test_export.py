"""gptv export: Hugging Face folders that reproduce a run's predictive distribution, offline."""

import json
import os

import pytest
import torch
from conftest import SHARED_DATA, tiny_overrides

from gptvariants.apps.export import EXPORT_FILES, ExportError, export
from gptvariants.core.config import load_config
from gptvariants.core.hf_shape import hf_shape
from gptvariants.core.model import GPT
from gptvariants.data.prepare import prepare
from gptvariants.data.tokenizers import load_tokenizer
from gptvariants.decode.generate import generate
from gptvariants.store.checkpoint import CheckpointError, load_run, save_checkpoint
from gptvariants.train.loop import train

transformers = pytest.importorskip("transformers")

# a char corpus with the whitespace a tokenizer could lose: runs of spaces, tabs, blank lines
TEXT = "".join(
    f"Line {i}:  the king is {'dead' if i % 3 else 'alive'},\tlong live the king!\n" + "\n" * (i % 2)
    for i in range(150)
)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def char_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("char")
    (root / "input.txt").write_text(TEXT, encoding="utf-8")
    prepare(f"text:{root / 'input.txt'}", root / "data")
    return root / "data"


@pytest.fixture(scope="module")
def bpe_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("bpe")
    (root / "input.txt").write_text(TEXT * 2, encoding="utf-8")
    prepare(f"text:{root / 'input.txt'}", root / "data", "bpe:300")
    return root / "data"


# name -> (variant, dataset fixture, extra config): together they cover tied and untied heads,
# biases or none, both GELUs, a padded vocabulary, every head and readout, and every offline tokenizer
RUNS = {
    "baseline": ("baseline", "tiny_data", {}),
    "smooth-char": ("smooth", "char_data", dict(tie_weights=False, bias=False, gelu="exact", vocab_size=80)),
    "bayes": ("bayes", "tiny_data", {}),
    "baseline-bpe": ("baseline", "bpe_data", {}),
    "sig": ("sig", "tiny_data", {}),
    "bayes-sig-char": ("bayes-sig", "char_data", dict(bias=False, tie_weights=False)),
}
PLAIN = ("baseline", "smooth-char", "bayes", "baseline-bpe")


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory):
    """Each run trained for a few steps (cached per module) and exported."""
    cache = {}

    def get(name):
        if name not in cache:
            variant, data_fixture, extra = RUNS[name]
            data = request.getfixturevalue(data_fixture)
            root = tmp_path_factory.mktemp(name)
            cfg = load_config(
                variant,
                overrides=tiny_overrides(
                    data, root / "run", max_iters=12, eval_interval=12, eval_iters=1, learning_rate=3e-3, **extra
                ),
            )
            train(cfg)
            export(root / "run", root / "hf")
            cache[name] = (root / "run", root / "hf")
        return cache[name]

    return get


def _hf(folder):
    return transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()


def _ids(model, n=2, T=24, seed=0):
    return torch.randint(0, model.config.vocab_size, (n, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", PLAIN)
def test_softmax_heads_export_as_plain_gpt2_with_equal_logits(runs, name):
    run, folder = runs(name)
    model, cfg = load_run(run)
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert type(hf).__name__ == "GPT2LMHeadModel" and not (folder / "modeling_gptvariants.py").exists()
    assert not info["missing_keys"] and not info["unexpected_keys"]
    conf = json.loads((folder / "config.json").read_text())
    assert conf["tie_word_embeddings"] == cfg.model.tie_weights and conf["n_positions"] == cfg.model.block_size
    assert conf["activation_function"] == ("gelu_new" if cfg.model.gelu == "tanh" else "gelu")
    assert conf["vocab_size"] == cfg.model.vocab_size
    x = _ids(model)
    with torch.no_grad():
        ours = model.logits(model.transformer(x))  # the posterior mean for the Bayesian head
        theirs = hf.eval()(x).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    if name == "bayes":
        assert "posterior mean" in conf["gptvariants"]["predictive"]
        assert "posterior mean" in (folder / "README.md").read_text()


@pytest.mark.parametrize("name", ["sig", "bayes-sig-char"])
def test_sigmoid_heads_export_their_predictive_log_probs(runs, name):
    run, folder = runs(name)
    model, cfg = load_run(run)
    conf = json.loads((folder / "config.json").read_text())
    assert conf["model_type"] == "gptvariants" and conf["gptvariants"]["readout"] == "sigmoid"
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(
        folder, trust_remote_code=True, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    x = _ids(model)
    with torch.no_grad():
        expected = model.objective.log_probs(model.logits(model.transformer(x)))
        out = hf.eval()(x, labels=x)
    torch.testing.assert_close(torch.log_softmax(out.logits, -1), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=0)  # the logits are already log p
    nll = -expected[:, :-1].gather(-1, x[:, 1:, None]).mean()
    torch.testing.assert_close(out.loss, nll, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="trust_remote_code"):  # never loads silently as plain GPT-2
        transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=False)


def test_set_draw_readout_exports_exactly(tiny_data, tmp_path):
    """p_v ~ 1 - (1 - s_v)^(1/m): a sig run with set_draws = 3 (weights untrained: the readout is the point)."""
    data_tok = load_tokenizer(tiny_data)
    overrides = tiny_overrides(tiny_data, tmp_path / "run", set_draws=3, vocab_size=data_tok.vocab_size)
    cfg = load_config("sig", overrides=overrides)
    torch.manual_seed(0)
    model = GPT(cfg.model, cfg.objective)
    with torch.no_grad():
        model.head.bias.normal_(-2.0, 2.0)
    save_checkpoint(tmp_path / "run", model, {"step": 0, "config": cfg.to_dict()})
    data_tok.save(tmp_path / "run")
    export(tmp_path / "run", tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["gptvariants"]["set_draws"] == 3
    hf = _hf(tmp_path / "hf")
    x = _ids(model)
    with torch.no_grad():
        expected = model.objective.log_probs(model.logits(model.eval().transformer(x)))
        got = torch.log_softmax(hf(x).logits, -1)
    assert model.objective.set_draws == 3
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["baseline", "sig", "smooth-char"])
def test_greedy_generation_matches_gptv(runs, name):
    run, folder = runs(name)
    model, cfg = load_run(run)
    tok = load_tokenizer(run)
    hf = _hf(folder)
    prompt = _ids(model, n=1, T=6, seed=1)
    n = cfg.model.block_size - 6  # stays within the context
    ours = generate(model, prompt, n, greedy=True, stop_tokens=[] if tok.eot_token is None else [tok.eot_token])[0]
    theirs = hf.generate(prompt, max_new_tokens=n, do_sample=False)[0, 6:].tolist()
    if tok.eot_token is not None and theirs and theirs[-1] == tok.eot_token:
        theirs = theirs[:-1]  # HF keeps the end-of-text token it stopped at; gptv drops it
    assert theirs == ours


@pytest.mark.parametrize("name", ["baseline", "sig"])
def test_generation_past_the_context_slides_the_window_like_gptv(runs, name):
    """A plain GPT-2 export and a remote-code one, loaded with trust_remote_code=True, generate
    2.5 contexts' worth of tokens greedily, as gptv's own sliding-window generate does."""
    run, folder = runs(name)
    model, cfg = load_run(run)
    hf = _hf(folder)
    assert type(hf).__name__ == ("GPT2LMHeadModel" if name in PLAIN else "GPTVariantsForCausalLM")
    block = cfg.model.block_size
    prompt = _ids(model, n=1, T=block + 3, seed=3)  # longer than the context too
    n = 2 * block + block // 2
    ours = generate(model, prompt, n, greedy=True, stop_tokens=[])[0]
    theirs = hf.generate(prompt, max_new_tokens=n, do_sample=False, eos_token_id=None)
    assert theirs.shape == (1, block + 3 + n) and theirs[0, : block + 3].equal(prompt[0])
    assert theirs[0, block + 3 :].tolist() == ours
    sampled = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, do_sample=True, top_k=5)
    assert sampled.shape == theirs.shape
    with pytest.raises(ValueError, match="past the context .* num_beams=2"):
        hf.generate(prompt, max_new_tokens=n, num_beams=2)


def test_sliding_generation_keeps_ended_rows_padded(runs):
    """End-of-text in one stretch: that row stays padded in the next ones; the others go on."""
    from gptvariants.apps.hf_modeling.sliding_generate import generate as sliding

    run, folder = runs("sig")
    hf = _hf(folder)
    block = hf.config.n_positions
    prompt = _ids(hf, n=2, T=4, seed=4)
    free = sliding(prompt, model=hf, max_new_tokens=3 * block, do_sample=False, eos_token_id=None)
    eos = int(free[0, 4 + 2])  # row 0's third new token ends row 0
    if (free[1, 4:] == eos).any():
        pytest.skip("both rows produce the chosen end token")
    out = sliding(prompt, model=hf, max_new_tokens=3 * block, do_sample=False, eos_token_id=eos, pad_token_id=0)
    assert out[0, 4 + 3 :].eq(0).all() and out[1].equal(free[1])


@pytest.mark.filterwarnings("ignore:Using the model-agnostic default")
def test_plain_gpt2_without_remote_code_stops_at_the_context(runs):
    run, folder = runs("baseline")
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    block = hf.config.n_positions
    out = hf.generate(_ids(hf, n=1, T=block - 4), do_sample=False, eos_token_id=None)  # no length: the default
    assert out.shape[1] == block
    readme = (folder / "README.md").read_text()
    assert "trust_remote_code=True" in readme and f"<= {block + 1}" in readme


@pytest.mark.parametrize("name", ["baseline", "smooth-char", "baseline-bpe"])
def test_tokenizer_round_trips(runs, name):
    run, folder = runs(name)
    ours = load_tokenizer(run)
    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    ids = _ids(load_run(run)[0], n=1, T=200, seed=2)[0].clamp(max=ours.vocab_size - 1).tolist()
    texts = [ours.decode(ids), TEXT[:500]] if ours.kind != "word" else [ours.decode(ids)]
    for text in texts:
        assert theirs.encode(text) == ours.encode(text)
        assert theirs.decode(theirs.encode(text)) == text
    if ours.eot_token is not None:
        assert theirs.eos_token_id == ours.eot_token


def _fast(path):
    return transformers.PreTrainedTokenizerFast(tokenizer_file=str(path), clean_up_tokenization_spaces=False)


def test_char_tokenizer_round_trips_tiny_shakespeare(tmp_path):
    path = SHARED_DATA / "tinyshakespeare" / "input.txt"
    if not path.is_file():
        pytest.skip("Tiny Shakespeare not in ../shared/data")
    from gptvariants.data.tokenizers import build_tokenizer

    text = path.read_text(encoding="utf-8")
    tok = build_tokenizer("char", text)
    tok.to_hf().save(str(tmp_path / "tokenizer.json"))
    hf = _fast(tmp_path / "tokenizer.json")
    ids = hf.encode(text)
    assert ids == tok.encode(text) and hf.decode(ids) == text


def test_gpt2_tokenizer_exports_when_its_vocabulary_is_available(tmp_path):
    from gptvariants.data.tokenizers import build_tokenizer

    try:
        tok = build_tokenizer("gpt2")
    except RuntimeError:
        pytest.skip(
            "GPT-2 vocabulary not available offline (tiktoken downloads it); "
            "tests/test_tokenizers.py converts a small one"
        )
    tok.to_hf().save(str(tmp_path / "tokenizer.json"))
    hf = _fast(tmp_path / "tokenizer.json")
    text = TEXT[:2000] + " ünïcode ✓ <|endoftext|>"
    assert hf.encode(text) == tok.encode(text) and hf.decode(hf.encode(text)) == text


def test_remote_code_folder_loads_its_tokenizer(runs):
    run, folder = runs("sig")
    ours = load_tokenizer(run)
    text = ours.decode(list(range(ours.vocab_size)))
    for trust in (True, None):  # without trust_remote_code, transformers falls back to the generic config
        theirs = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=trust)
        assert theirs.encode(text) == ours.encode(text) and theirs.decode(theirs.encode(text)) == text


def test_init_from_an_export_takes_its_shape_and_weights(runs, tmp_path):
    for name in ("smooth-char", "sig"):
        run, folder = runs(name)
        model, cfg = load_run(run)
        shape = hf_shape(str(folder))
        assert shape == {k: getattr(cfg.model, k) for k in shape}
        data = cfg.train.data
        overrides = tiny_overrides(data, tmp_path / name, max_iters=0, eval_iters=1, init_from=str(folder))
        overrides = {k: v for k, v in overrides.items() if k not in shape}  # no shape flags: the folder's
        new = load_config(cfg.objective.variant, overrides=overrides)
        assert {k: getattr(new.model, k) for k in shape} == shape
        train(new)
        again, _ = load_run(tmp_path / name)
        x = _ids(model)
        with torch.no_grad():
            a = model.objective.log_probs(model.logits(model.transformer(x)))
            b = again.objective.log_probs(again.logits(again.transformer(x)))
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)


def test_refusals(runs, tmp_path, capsys):
    from gptvariants.apps.cli.main import main

    run, _ = runs("baseline")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not empty.*--force"):
        export(run, out)
    export(run, out, force=True)  # replaces the export's files, keeps the rest
    export(run, out, force=True)  # again, over an export's own subfolder (custom_generate/)
    assert (out / "notes.txt").read_text() == "keep me" and (out / "model.safetensors").is_file()
    assert set(EXPORT_FILES) - {"modeling_gptvariants.py"} <= {str(p.relative_to(out)) for p in out.rglob("*")}
    with pytest.raises(ExportError, match="unknown export format 'onnx'; known: hf"):
        export(run, tmp_path / "x", "onnx")
    with pytest.raises(ExportError, match="run folder itself"):
        export(run, run, force=True)
    (tmp_path / "empty-run").mkdir()
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        export(tmp_path / "empty-run", tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind

    assert main(["export", str(run), str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["export", str(run), str(tmp_path / "cli")]) == 0
    printed = capsys.readouterr()
    assert "AutoModelForCausalLM.from_pretrained" in printed.out.splitlines()[0]
    assert "trust_remote_code" not in printed.out.splitlines()[0] and "context is 32 tokens" in printed.out
    assert "gptv export: loading" in printed.err and "gptv export: writing" in printed.err  # progress


def test_gpt2_run_without_its_vocabulary_is_refused(runs, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(runs("baseline")[0], run)
    (run / "tokenizer_meta.json").write_text(json.dumps({"kind": "gpt2", "name": "gpt2"}))
    with pytest.raises(ExportError) as e:
        export(run, tmp_path / "hf")
    if "GPT-2 vocabulary" not in str(e.value):  # tiktoken has it: the 50257 ids do not fit this 65-id model
        assert "the tokenizer has 50257 ids but the model only 65" in str(e.value)


def test_export_follows_the_umask(runs, tmp_path):
    run, _ = runs("baseline")
    old = os.umask(0o022)
    try:
        export(run, tmp_path / "hf")
    finally:
        os.umask(old)
    assert (tmp_path / "hf").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "hf" / "model.safetensors").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "hf" / "custom_generate").stat().st_mode & 0o777 == 0o755


def test_readout_check_refuses_a_distribution_it_cannot_reproduce(runs, monkeypatch):
    from gptvariants.apps.export import readout_of

    model, _ = load_run(runs("baseline")[0])
    monkeypatch.setattr(model.objective, "log_probs", lambda z: torch.log_softmax(z / 2, -1))
    with pytest.raises(ExportError, match="cannot export .* exactly"):
        readout_of(model)


def test_public_names_are_discoverable():
    import gptvariants

    names = dir(gptvariants)
    for name in ("load", "LanguageModel", "TokenRecord", "Completion", "__version__"):
        assert name in names and name in gptvariants.__all__
        assert getattr(gptvariants, name) is not None
    from importlib.metadata import version

    assert gptvariants.__version__ == version("gptvariants")
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        gptvariants.nope  # noqa: B018


def test_a_head_without_a_gpt2_output_layer_is_refused_before_writing(tiny_data, tmp_path):
    run = tmp_path / "ens"
    over = tiny_overrides(tiny_data, run, max_iters=2, eval_interval=2, eval_iters=1)
    train(load_config("ensemble", overrides=over))
    with pytest.raises(ExportError, match="cannot export the ensemble head: .* averages the distributions of its 4"):
        export(run, tmp_path / "hf")
    assert not (tmp_path / "hf").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
