"""lm-evaluation-harness: the ``gptv`` model on local tasks against ``gptv eval`` and direct computation.

Local task YAMLs are written per test (data in tmp; no hub download). The evaluated text is a
slice of ../shared/data/wikitext-2/valid.txt when present, a generated text otherwise.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import SHARED_DATA, TINY_SHAPE

from gptvariants.apps.api import load
from gptvariants.apps.cli import main as cli
from gptvariants.apps.harness import INSTALL_HINT, lm_eval_argv
from gptvariants.core.config import load_config
from gptvariants.data.prepare import prepare
from gptvariants.evaluate.evaluation import evaluate
from gptvariants.train.loop import train

WIKITEXT = SHARED_DATA / "wikitext-2" / "valid.txt"
TINY = {**TINY_SHAPE, "eval_iters": 1, "eval_interval": 1000, "warmup_iters": 2, "device": "cpu"}  # conftest's shape
ROLLING_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {cache}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - {{metric: word_perplexity, aggregation: weighted_perplexity, higher_is_better: false}}
  - {{metric: bits_per_byte, aggregation: bits_per_byte, higher_is_better: false}}
"""
CHOICE_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {cache}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
target_delimiter: ""
metric_list:
  - {{metric: acc, aggregation: mean, higher_is_better: true}}
"""


def _corpus() -> tuple[str, str]:
    """(training text, evaluated text): wikitext-2 when available; the evaluated text holds a
    character the char vocabulary lacks, dropped (and counted) by both gptv eval and lm-eval."""
    if WIKITEXT.is_file():
        text = WIKITEXT.read_text(encoding="utf-8")[:40_000]
        return text[:30_000], text[30_000:34_000] + " 5 € each\n"
    words = "the king said that a lord of the north would ride to the sea and never come home".split()
    g = torch.Generator().manual_seed(0)
    lines = [
        " ".join(words[i] for i in torch.randint(len(words), (12,), generator=g).tolist()) + " .\n" for _ in range(700)
    ]
    return "".join(lines[:600]), "".join(lines[600:]) + "5 € each\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny runs of every head kind: char tokenizer (no end-of-text) and a word tokenizer (with one)."""
    root = tmp_path_factory.mktemp("lmeval")
    train_text, eval_text = _corpus()
    (root / "train.txt").write_text(train_text, encoding="utf-8")
    (root / "eval.txt").write_text(eval_text, encoding="utf-8")
    prepare(f"text:{root / 'train.txt'}", root / "char")
    prepare("synthetic:tiny", root / "synthetic")
    out = {}
    for name, variant, data, extra in [
        ("baseline", "baseline", "char", {}),
        ("sig", "sig", "char", {}),
        ("bayes", "bayes", "char", {"posterior_sigma_init": 0.3}),
        ("word", "baseline", "synthetic", {}),
    ]:
        cfg = load_config(
            variant, None, {**TINY, "data": str(root / data), "out_dir": str(root / name), "max_iters": 20, **extra}
        )
        train(cfg)
        out[name] = root / name
    word = load(out["word"])
    from gptvariants.data.dataset import TokenDataset

    (root / "word.txt").write_text(word.tokenizer.decode(TokenDataset(root / "synthetic").split("val")[:1500]))
    return root, out


@pytest.fixture(scope="module")
def harness():
    pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (pip install '.[eval]')")
    import lm_eval
    from lm_eval.tasks import TaskManager

    from gptvariants.apps.harness.model import GPTVariantsLM

    def evaluate_task(tmp: Path, yaml: str, docs: list[dict], model_args: str, name: str = "local") -> dict:
        (tmp / "tasks").mkdir(exist_ok=True)
        data = tmp / f"{name}.jsonl"
        data.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
        (tmp / "tasks" / f"{name}.yaml").write_text(yaml.format(name=name, data=data, cache=tmp / "hf-cache"))
        manager = TaskManager(include_path=str(tmp / "tasks"), include_defaults=False)
        return lm_eval.simple_evaluate(
            model="gptv",
            model_args=model_args,
            tasks=[name],
            task_manager=manager,
            log_samples=True,
            device="cpu",
            random_seed=None,
            numpy_random_seed=None,
            torch_random_seed=None,
            fewshot_random_seed=None,
        )

    return evaluate_task, GPTVariantsLM


class Request:
    """What lm-eval hands a model: an object with ``args``."""

    def __init__(self, *args):
        self.args = args


# ----------------------------------------------------------------------------- windows


def test_continuation_windows_cut_long_contexts_and_chunk_long_continuations(harness):
    from gptvariants.apps.harness.model import continuation_windows

    # (begin, end, first scored target): x = tokens[begin:end-1]
    assert continuation_windows(3, 6, 8) == [(0, 6, 3)]  # everything fits
    assert continuation_windows(20, 23, 8) == [(14, 23, 20)]  # the last 8 tokens before the last target
    assert continuation_windows(1, 18, 8) == [(0, 9, 1), (8, 17, 9), (9, 18, 17)]  # chunks of 8 targets
    for n_ctx, n, block in [(1, 2, 1), (5, 40, 7), (39, 40, 7)]:
        scored = [t for b, e, s in continuation_windows(n_ctx, n, block) for t in range(s, e)]
        assert scored == list(range(n_ctx, n))
        assert all(e - 1 - b <= block for b, e, _ in continuation_windows(n_ctx, n, block))
    with pytest.raises(ValueError, match="context and a continuation"):
        continuation_windows(0, 5, 8)


# ----------------------------------------------------------------------------- rolling = gptv eval


@pytest.mark.parametrize("name", ["baseline", "sig", "bayes", "word"])
def test_rolling_loglikelihood_equals_gptv_eval(runs, harness, tmp_path, name):
    root, run = runs
    evaluate_task, _ = harness
    text_file = root / ("word.txt" if name == "word" else "eval.txt")
    text = text_file.read_text(encoding="utf-8")
    r = evaluate_task(tmp_path, ROLLING_YAML, [{"text": text}], f"run={run[name]}")
    ref = evaluate(run[name], text=str(text_file), stride=32, num_samples=0, out=tmp_path / "eval.json")["perplexity"]
    (sample,) = r["samples"]["local"]
    ll = sample["resps"][0][0]
    assert -ll / ref["tokens_scored"] == pytest.approx(ref["nats_per_token"], abs=1e-6)
    # lm-eval's own metric, from its own byte count: within 1e-4 nats/token of gptv eval
    bpb = r["results"]["local"]["bits_per_byte,none"]
    nats_per_token = bpb * math.log(2) * len(text.encode("utf-8")) / ref["tokens_scored"]
    assert abs(nats_per_token - ref["nats_per_token"]) < 1e-4
    assert r["config"]["gptv_variant"] == load(run[name]).config.objective.variant


def test_rolling_documents_are_scored_separately(runs, harness):
    _, run = runs
    _, GPTVariantsLM = harness
    lm = GPTVariantsLM(run=str(run["bayes"]), device="cpu")
    texts = ["the king said", "a lord of the north would ride to the sea " * 4, "x"]
    alone = [lm.loglikelihood_rolling([Request(t)], disable_tqdm=True)[0] for t in texts]
    together = lm.loglikelihood_rolling([Request(t) for t in texts], disable_tqdm=True)
    assert together == pytest.approx(alone, abs=1e-9)
    assert alone[2] == 0.0  # one character and no end-of-text token: nothing to score


# ----------------------------------------------------------------------------- loglikelihood by hand


def _by_hand(run_dir: Path, tokens: list[int], n_context: int, bayes_mode: str | None = None) -> tuple[float, bool]:
    """log p(tokens[n_context:] | tokens[:n_context]) from the last block_size tokens before the
    last target, computed from the model's logits without the predictive module."""
    lm = load(run_dir)
    model, block = lm.model, lm.model.config.block_size
    assert len(tokens) - n_context <= block
    x = torch.tensor([tokens[-(block + 1) :][:-1]])
    with torch.no_grad():
        z = model.logits(model.transformer(x))[0]
    if model.objective.sigmoid:
        log_p = F.logsigmoid(z) - torch.logsumexp(F.logsigmoid(z), dim=-1, keepdim=True)
    else:
        log_p = torch.log_softmax(z, dim=-1)
    n = len(tokens) - n_context
    y = torch.tensor(tokens[n_context:])
    rows = log_p[-n:]
    return float(rows.gather(1, y[:, None]).sum()), bool((rows.argmax(-1) == y).all())


@pytest.mark.parametrize("name,mode", [("baseline", None), ("sig", None), ("bayes", "mean")])
def test_multiple_choice_loglikelihood_checked_by_hand(runs, harness, tmp_path, name, mode):
    root, run = runs
    evaluate_task, _ = harness
    lm = load(run[name])
    text = (root / "eval.txt").read_text(encoding="utf-8").replace("€", "")
    short = text[:12].rstrip()  # lm-eval would move a trailing space into the continuation
    draws = 0 if mode == "mean" else None  # model_arg bayes_mode=mean is mc_samples=0
    greedy = lm.generate(short, max_new_tokens=3, greedy=True, mc_samples=draws)  # the argmax continuation
    docs = [
        {"question": short, "choices": [greedy, text[12:15], text[100:103]], "label": 0},
        {"question": text[:200], "choices": [text[200:230], text[300:310], text[200:201]], "label": 1},
    ]
    args = f"run={run[name]}" + (f",bayes_mode={mode}" if mode else "")
    r = evaluate_task(tmp_path, CHOICE_YAML, docs, args)
    samples = sorted(r["samples"]["local"], key=lambda s: s["doc_id"])
    correct = []
    for doc, sample in zip(docs, samples):
        expected = []
        for choice in doc["choices"]:
            # lm-eval moves the context's trailing whitespace into the continuation
            context = doc["question"].rstrip()
            ctx = lm.tokenizer.encode(context)
            cont = lm.tokenizer.encode(doc["question"][len(context) :] + choice)
            expected.append(_by_hand(run[name], ctx + cont, len(ctx)))
        got = [tuple(resp[0]) for resp in sample["resps"]]
        assert [g[0] for g in got] == pytest.approx([e[0] for e in expected], abs=1e-4)
        assert [g[1] for g in got] == [e[1] for e in expected]
        correct.append(max(range(3), key=lambda k: expected[k][0]) == doc["label"])
    assert samples[0]["resps"][0][0][1] is True  # the greedy continuation is recognised as greedy
    assert r["results"]["local"]["acc,none"] == pytest.approx(sum(correct) / len(correct))


def test_long_continuation_and_batching(runs, harness):
    """A continuation longer than block_size is scored in chunks, each from its own window; the
    scores do not depend on batch_size or on the order of the requests."""
    root, run = runs
    _, GPTVariantsLM = harness
    text = (root / "eval.txt").read_text(encoding="utf-8").replace("€", "").lstrip()
    lm = GPTVariantsLM(run=str(run["baseline"]), device="cpu", batch_size=1)
    requests = [
        Request(text[:1], text[1:65]),
        Request(text[:50], text[50:53]),
        Request(text[:5], text[5:40]),
        Request(" ", "the sea"),
    ]  # a blank context is the start token, as an empty one
    one = lm.loglikelihood(requests, disable_tqdm=True)
    # 1 + 64 characters with block_size 32: the same windows as gptv eval's disjoint ones
    assert one[0][0] == pytest.approx(lm.loglikelihood_rolling([Request(text[:65])], disable_tqdm=True)[0], abs=1e-5)
    # 35 targets: 5..36 from tokens 4..35, then 37..39 from tokens 7..38
    ids, n_ctx = lm.tok_encode(text[:40]), len(text[:5].rstrip())  # lm-eval moves trailing spaces
    first, last = _by_hand(run["baseline"], ids[:37], n_ctx), _by_hand(run["baseline"], ids, 37)
    # fp32 sums of 35 log-probabilities in another order: 1e-5 absolute is below their rounding at ~138 nats
    assert one[2][0] == pytest.approx(first[0] + last[0], rel=1e-6)
    start = lm.tok_encode(" the sea")
    assert one[3][0] == pytest.approx(_by_hand(run["baseline"], [lm.eot_token_id] + start, 1)[0], abs=1e-5)
    lm.batch_size = 7
    batched = lm.loglikelihood(requests[::-1], disable_tqdm=True)[::-1]
    assert [b[0] for b in batched] == pytest.approx([o[0] for o in one], abs=1e-5)
    assert [b[1] for b in batched] == [o[1] for o in one]


def test_bayesian_draws_are_seeded_per_request(runs, harness):
    _, run = runs
    _, GPTVariantsLM = harness
    requests = [Request("the king", " said"), Request("a lord", " of the north"), Request("", "the sea")]
    lm = GPTVariantsLM(run=str(run["bayes"]), device="cpu", batch_size=1, mc_samples=4, seed=3)
    one = lm.loglikelihood(requests, disable_tqdm=True)
    lm.batch_size = 3
    again = lm.loglikelihood(requests[::-1], disable_tqdm=True)[::-1]
    assert [a[0] for a in again] == pytest.approx([o[0] for o in one], abs=1e-6)
    # by hand: a fresh predictor with the same seed, the request alone
    p = load(run["bayes"]).predictor(mc_samples=4, seed=3)
    ids = lm.tok_encode("a lord of the north")
    with torch.no_grad():
        hs = [h[0, 5:] for h in p.encode(torch.tensor([ids[:-1]]))]
        expected = float(p.draws(hs).logprob(torch.tensor(ids[6:])).sum())
    assert one[1][0] == pytest.approx(expected, abs=1e-5)
    mean = GPTVariantsLM(run=str(run["bayes"]), device="cpu", bayes_mode="mean")
    assert abs(mean.loglikelihood(requests, disable_tqdm=True)[1][0] - one[1][0]) > 1e-3  # posterior sigma 0.3
    other = GPTVariantsLM(run=str(run["bayes"]), device="cpu", mc_samples=4, seed=4)
    assert other.loglikelihood(requests, disable_tqdm=True)[1][0] != one[1][0]


# ----------------------------------------------------------------------------- generation


@pytest.mark.filterwarnings("ignore:prompt of")  # the reference lm.generate of the long prompt
def test_generate_until_stops_and_matches_generate(runs, harness):
    root, run = runs
    _, GPTVariantsLM = harness
    model = GPTVariantsLM(run=str(run["word"]), device="cpu", batch_size=2)
    lm = load(run["word"])
    prompts = (root / "word.txt").read_text().split()[:40]
    requests = [Request(" ".join(prompts[: 3 + k]), {"until": [prompts[7]], "max_gen_toks": 12}) for k in range(3)]
    requests.append(Request(" ".join(prompts[:60]), {"until": [], "max_gen_toks": 5, "do_sample": False}))
    out = model.generate_until(requests, disable_tqdm=True)
    for req, text in zip(requests, out):
        kw = req.args[1]
        assert text == lm.generate(req.args[0], kw["max_gen_toks"], greedy=True, stop=kw["until"])
        assert not any(s in text for s in kw["until"])
    assert len(lm.tokenizer.encode(out[-1])) <= 5
    sampled = model.generate_until(
        [Request(prompts[0], {"until": [], "max_gen_toks": 8, "do_sample": True, "temperature": 1.0})],
        disable_tqdm=True,
    )
    assert sampled == [lm.generate(prompts[0], 8, temperature=1.0, seed=1337)]


# ----------------------------------------------------------------------------- bad input and the CLI


def test_bad_model_arguments_are_refused(runs, harness):
    _, run = runs
    _, GPTVariantsLM = harness
    with pytest.raises(ValueError, match="run=RUN"):
        GPTVariantsLM(device="cpu")
    with pytest.raises(ValueError, match="unknown gptv model_args.*pretrained"):
        GPTVariantsLM(run=str(run["baseline"]), pretrained="gpt2")
    with pytest.raises(ValueError, match="deterministic head"):
        GPTVariantsLM(run=str(run["baseline"]), bayes_mode="sequence")
    with pytest.raises(ValueError, match="not for scoring text"):
        GPTVariantsLM(run=str(run["bayes"]), method="sequence")
    with pytest.raises(ValueError, match="bayes_mode must be one of mean, step, sequence"):
        GPTVariantsLM(run=str(run["bayes"]), bayes_mode="median")
    with pytest.raises(ValueError, match="contradicts mc_samples=4"):
        GPTVariantsLM(run=str(run["bayes"]), bayes_mode="mean", mc_samples=4)
    with pytest.raises(ValueError, match="unknown must be"):
        GPTVariantsLM(run=str(run["baseline"]), unknown="drop")
    lm = GPTVariantsLM(run=str(run["baseline"]), device="cuda:0" if not torch.cuda.is_available() else "cpu")
    assert lm.device.type == "cpu"  # lm-eval's default --device falls back to the CPU
    with pytest.raises(ValueError, match="no token the run's tokenizer can encode"):
        lm.loglikelihood([Request("the king", "€")], disable_tqdm=True)
    with pytest.raises(ValueError, match="no token the run's tokenizer can encode"):
        lm.loglikelihood([Request("", "€")], disable_tqdm=True)
    strict = GPTVariantsLM(run=str(run["baseline"]), device="cpu", unknown="error")
    with pytest.raises(ValueError, match="not in the char vocabulary"):
        strict.loglikelihood([Request("the king", " €")], disable_tqdm=True)


def test_lm_eval_argv_sets_the_model_and_passes_the_rest():
    argv = lm_eval_argv("runs/b", "hellaswag", mc_samples=0, model_args="seed=3", extra=["--limit", "5"])
    assert argv == [
        "run",
        "--model",
        "gptv",
        "--model_args",
        "run=runs/b,mc_samples=0,seed=3",
        "--tasks",
        "hellaswag",
        "--device",
        "auto",
        "--batch_size",
        "16",
        "--limit",
        "5",
    ]
    with pytest.raises(ValueError, match="sets --model itself"):
        lm_eval_argv("runs/b", "x", extra=["--model", "hf"])
    with pytest.raises(ValueError, match="sets --batch_size itself"):
        lm_eval_argv("runs/b", "x", extra=["--batch_size=4"])
    with pytest.raises(ValueError, match="cannot carry a run path"):
        lm_eval_argv("runs/a,b", "x")


def test_gptv_lm_eval_without_lm_eval_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval -> ImportError
    assert cli.main(["lm-eval", "runs/none", "--tasks", "x"]) == 2
    assert INSTALL_HINT in capsys.readouterr().err


def _rolling_task(root: Path, tmp: Path, name: str) -> Path:
    text = (root / "eval.txt").read_text(encoding="utf-8")
    (tmp / "tasks").mkdir()
    (tmp / "doc.jsonl").write_text(json.dumps({"text": text}) + "\n", encoding="utf-8")
    (tmp / "tasks" / f"{name}.yaml").write_text(
        ROLLING_YAML.format(name=name, data=tmp / "doc.jsonl", cache=tmp / "hf-cache")
    )
    return tmp / "tasks"


def _bits_per_byte(out: Path, task: str) -> float:
    (results,) = out.rglob("results_*.json")
    return json.loads(results.read_text())["results"][task]["bits_per_byte,none"]


def test_gptv_lm_eval_command(runs, harness, tmp_path):
    """`gptv lm-eval RUN --tasks ...` through lm-eval's own command line."""
    root, run = runs
    tasks = _rolling_task(root, tmp_path, "local_cli")
    code = cli.main(
        [
            "lm-eval",
            str(run["sig"]),
            "--tasks",
            "local_cli",
            "--include_path",
            str(tasks),
            "--device",
            "cpu",
            "--output_path",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0
    ref = evaluate(run["sig"], text=str(root / "eval.txt"), stride=32, num_samples=0, out=tmp_path / "e.json")
    assert _bits_per_byte(tmp_path / "out", "local_cli") == pytest.approx(ref["perplexity"]["bits_per_byte"], abs=1e-6)


def test_python_m_harness_is_lm_eval_with_the_gptv_model(runs, harness, tmp_path):
    """The documented `python -m gptvariants.apps.harness --model gptv --model_args run=RUN ...`, as a user runs it."""
    root, run = runs
    tasks = _rolling_task(root, tmp_path, "local_m")
    cmd = [
        sys.executable,
        "-m",
        "gptvariants.apps.harness",
        "--model",
        "gptv",
        "--model_args",
        f"run={run['baseline']}",
        "--tasks",
        "local_m",
        "--include_path",
        str(tasks),
        "--output_path",
        str(tmp_path / "out"),
    ]
    # no --device: lm-eval's default, cuda:0, falls back to the CPU where CUDA is absent
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ref = evaluate(run["baseline"], text=str(root / "eval.txt"), stride=32, num_samples=0, out=tmp_path / "e.json")
    assert _bits_per_byte(tmp_path / "out", "local_m") == pytest.approx(ref["perplexity"]["bits_per_byte"], abs=1e-6)
