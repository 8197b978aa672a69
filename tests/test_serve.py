"""gptv serve: the JSON API (ASGI test client), its limits and file boundaries, the worker pool's
fairness, and the page itself in a real headless Chromium (skipped when none is installed)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
from conftest import tiny_overrides  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from gptvariants.apps.cli.main import main  # noqa: E402
from gptvariants.apps.serve.app import create_app  # noqa: E402
from gptvariants.apps.serve.batcher import Batcher  # noqa: E402
from gptvariants.apps.serve.runs import Report, ServeError, discover, load_runs  # noqa: E402
from gptvariants.apps.serve.worker import Busy, ModelPool  # noqa: E402
from gptvariants.core.config import load_config  # noqa: E402
from gptvariants.data.tokenizers import load_tokenizer  # noqa: E402
from gptvariants.decode.decoder import Decoder  # noqa: E402
from gptvariants.train.loop import train  # noqa: E402

VARIANTS = ("baseline", "bayes", "sig")
FITTED, ALPHAS = ("baseline", "sig"), (0.1, 0.2)  # the runs with conformal sets, at these alphas
REPORT_MD = """# tiny experiment

| Variant | Perplexity |
|---|---|
| baseline | 50.1 |
| bayes | 49.7 |

<script>alert("not run")</script>
"""


@pytest.fixture(scope="module")
def experiment(tiny_data, tmp_path_factory) -> Path:
    """An experiment folder: three tiny trained runs under runs/, a report.md and a plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = tmp_path_factory.mktemp("experiment")
    for v in VARIANTS:
        train(load_config(v, overrides=tiny_overrides(tiny_data, root / "runs" / v, max_iters=10, eval_interval=10)))
    for v in FITTED:  # conformal sets for the Score view's alpha menu; bayes has none
        args = ["conformal", str(root / "runs" / v), "--tokens", "600", "--device", "cpu"]
        assert main(args + [x for a in ALPHAS for x in ("--alpha", str(a))]) == 0
    (root / "report.md").write_text(REPORT_MD)
    plt.imsave(root / "curves.png", np.linspace(0, 1, 64).reshape(8, 8))
    return root


@pytest.fixture(scope="module")
def words(tiny_data) -> str:
    """A stretch of held-out text in the tiny language (every word in the vocabulary)."""
    tok = load_tokenizer(tiny_data)
    ids = np.memmap(tiny_data / "val.bin", dtype=np.uint16 if tok.vocab_size < 65536 else np.uint32, mode="r")[:24]
    return tok.decode([int(i) for i in ids]).strip()


@pytest.fixture(scope="module")
def runs(experiment):
    paths, report = discover([experiment])
    return load_runs(paths), report


@pytest.fixture(scope="module")
def client(runs):
    loaded, report = runs
    with TestClient(create_app(loaded, report, workers=2)) as c:
        yield c


def sse(response) -> list[tuple[str, dict]]:
    events = []
    for block in response.text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


# ----------------------------------------------------------------------------------- run discovery


def test_discover_runs_folders_and_experiments(experiment, tmp_path):
    paths, report = discover([experiment])
    assert list(paths) == sorted(VARIANTS) and report is not None and report.root == experiment.resolve()
    assert set(report.files) == {"report.md", "curves.png"} and report.plots == ["curves.png"]
    paths, report = discover([experiment / "runs"])  # an experiment's runs/: its report sits beside it
    assert list(paths) == sorted(VARIANTS) and report is not None
    paths, report = discover([experiment / "runs" / "sig", experiment / "runs" / "bayes"])
    assert list(paths) == ["sig", "bayes"] and report is None
    other = tmp_path / "other" / "sig"
    shutil.copytree(experiment / "runs" / "sig", other)
    paths, _ = discover([experiment / "runs" / "sig", other])  # same folder name: told apart by the parent
    assert list(paths) == ["runs/sig", "other/sig"]
    with pytest.raises(ServeError, match="holds no run"):
        discover([tmp_path / "other" / "sig" / "ckpt-00000010"])
    with pytest.raises(ServeError, match="is not a folder"):
        discover([tmp_path / "missing"])


def test_cli_gives_a_clear_error_for_a_folder_without_runs(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["serve", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "holds no run" in err and "Traceback" not in err


def test_cli_refuses_a_port_in_use_before_loading(experiment, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["serve", str(experiment), "--port", str(busy.getsockname()[1])]) == 2
    err = capsys.readouterr().err
    assert "cannot listen on 127.0.0.1" in err and "--port" in err and "loading" not in err


# ----------------------------------------------------------------------------------- the API


def test_runs_lists_variants_heads_and_limits(client):
    data = client.get("/api/runs").json()
    by = {r["name"]: r for r in data["runs"]}
    assert set(by) == set(VARIANTS) and data["report"] is True
    assert by["bayes"]["bayesian"] and not by["bayes"]["sigmoid"]
    assert by["sig"]["sigmoid"] and not by["sig"]["bayesian"]
    assert by["baseline"]["step"] == 10 and by["baseline"]["params"] > 0
    assert data["limits"]["max_new_tokens"] >= 100


@pytest.mark.parametrize("variant", VARIANTS)
def test_score_returns_the_library_scores(client, runs, words, variant):
    lm = runs[0][variant].lm
    r = client.post("/api/score", json={"run": variant, "text": words, "top_n": 4, "seed": 3})
    assert r.status_code == 200, r.text
    data = r.json()
    ref = lm.score(words, top_n=4, seed=3)
    assert len(data["tokens"]) == len(ref) == data["n_tokens"] > 5
    assert data["prefix"] + "".join(t["text"] for t in data["tokens"]) == words
    for got, want in zip(data["tokens"], ref):
        assert {"text", "logprob", "entropy", "top", "surprisal", "prob"} <= set(got)
        assert got["text"] == want.text and got["logprob"] == pytest.approx(want.logprob, abs=1e-6)
        assert got["entropy"] == pytest.approx(want.entropy, abs=1e-6)
        assert got["surprisal"] == pytest.approx(-want.logprob)
        assert len(got["top"]) == 4 and all(isinstance(t, str) and 0 <= p <= 1 for t, p in got["top"])
        assert ("mi" in got) == (variant == "bayes") and ("draws" in got) == (variant == "bayes")
        assert ("set" in got) == (variant == "sig")
        if variant == "sig":
            assert got["set_size"] == len(want.set) and got["set"] == want.set[:64]
        if variant == "bayes":
            assert got["mi"] == pytest.approx(want.mi, abs=1e-7)
            assert len(got["draws"]) == lm.config.objective.mc_samples
    nats = -sum(t.logprob for t in ref) / len(ref)
    assert data["nats_per_token"] == pytest.approx(nats, rel=1e-6)
    assert data["perplexity"] == pytest.approx(math.exp(nats), rel=1e-6)


def test_generate_streams_the_library_tokens(client, runs, words):
    prompt = " ".join(words.split()[:3])
    opts = {"max_new_tokens": 6, "temperature": 0.7, "top_k": 10, "seed": 5, "stop_at_eot": False}
    r = client.post(
        "/api/generate",
        json={"run": "bayes", "prompt": prompt, "mc_samples": 3, "top_n": 3, **opts},
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse(r)
    kinds = [e for e, _ in events]
    assert kinds == ["token"] * 6 + ["done"]
    ref = runs[0]["bayes"].lm.generate_details(prompt, mc_samples=3, top_n=3, **opts)
    tokens = [d for e, d in events if e == "token"]
    assert [t["id"] for t in tokens] == [t.id for t in ref.tokens]  # same seed, same tokens as the library
    assert [t["logprob"] for t in tokens] == pytest.approx([t.logprob for t in ref.tokens], abs=1e-6)
    assert all(len(t["draws"]) == 3 and "mi" in t and len(t["top"]) == 3 for t in tokens)
    done = events[-1][1]
    assert done["n_tokens"] == 6 and done["finish_reason"] == "length" and done["tokens_per_s"] > 0
    assert done["nats_per_token"] == pytest.approx(-sum(t.logprob for t in ref.tokens) / 6, rel=1e-5)


def test_mc_samples_zero_and_the_sequence_method_reach_the_library(client, runs, words):
    """The posterior mean (0 draws) and a per-sequence weight draw, as every front end spells them."""
    r = client.post("/api/score", json={"run": "bayes", "text": words, "mc_samples": 0, "top_n": 2})
    assert r.status_code == 200, r.text
    ref = runs[0]["bayes"].lm.score(words, mc_samples=0, top_n=2)
    assert [t["logprob"] for t in r.json()["tokens"]] == pytest.approx([t.logprob for t in ref], abs=1e-6)
    assert all("mi" not in t for t in r.json()["tokens"])  # one draw
    body = {"run": "bayes", "prompt": words.split()[0], "method": "sequence", "seed": 2, "max_new_tokens": 5}
    events = sse(client.post("/api/generate", json={**body, "stop_at_eot": False}))
    ref = runs[0]["bayes"].lm.generate_details(body["prompt"], 5, method="sequence", seed=2, stop_at_eot=False)
    assert [d["id"] for e, d in events if e == "token"] == [t.id for t in ref.tokens]


def test_generate_honours_stop_strings(client, words):
    prompt = words.split()[0]
    full = sse(
        client.post(
            "/api/generate",
            json={"run": "baseline", "prompt": prompt, "max_new_tokens": 12, "seed": 1, "stop_at_eot": False},
        )
    )
    text = "".join(d["text"] for e, d in full if e == "token")
    stop = text.split()[3]
    cut = sse(
        client.post(
            "/api/generate",
            json={
                "run": "baseline",
                "prompt": prompt,
                "max_new_tokens": 12,
                "seed": 1,
                "stop_at_eot": False,
                "stop": [stop],
            },
        )
    )
    got = "".join(d["text"] for e, d in cut if e == "token")
    assert stop not in got and text.startswith(got) and cut[-1][1]["finish_reason"] == "stop"


@pytest.mark.parametrize("variant", FITTED)
def test_score_with_conformal_sets_gives_the_library_set_sizes(client, runs, words, variant):
    """Each token's LAC set size and whether it holds the token, as LanguageModel.score(conformal=)
    gives them; a sigmoid run keeps its own set beside it."""
    body = {"run": variant, "text": words, "top_n": 3, "conformal": 0.1}
    r = client.post("/api/score", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    ref = runs[0][variant].lm.score(words, top_n=3, conformal=0.1)
    got = data["tokens"]
    assert [t["conformal_set_size"] for t in got] == [t.set_size for t in ref]
    assert [t["in_conformal_set"] for t in got] == [t.in_set for t in ref]
    assert len({t.set_size for t in ref}) > 1  # sizes that vary: a test that could tell them apart
    assert data["mean_set_size"] == pytest.approx(sum(t.set_size for t in ref) / len(ref))
    assert data["set_coverage"] == pytest.approx(sum(t.in_set for t in ref) / len(ref))
    if variant == "sig":  # the sigmoid set keeps its name
        assert [t["set_size"] for t in got] == [len(t.set) for t in ref]
    plain = client.post("/api/score", json={**body, "conformal": None}).json()
    assert not any("conformal_set_size" in t or "in_set" in t for t in plain["tokens"])
    assert plain["mean_set_size"] is None and plain["set_coverage"] is None


def test_runs_list_the_fitted_conformal_alphas(client, experiment):
    by = {r["name"]: r["conformal"] for r in client.get("/api/runs").json()["runs"]}
    assert by == {"baseline": {"default": list(ALPHAS)}, "sig": {"default": list(ALPHAS)}, "bayes": {}}


def test_fitted_alphas_of_a_missing_or_damaged_file_are_none(tmp_path):
    from gptvariants.predict.conformal import fitted_alphas

    assert fitted_alphas(tmp_path) == {}
    for damaged in ("{not json", '{"fits": []}', '{"fits": {"default": {"rules": {"lac@x": {}}}}}'):
        (tmp_path / "conformal.json").write_text(damaged)
        assert fitted_alphas(tmp_path) == {}
    (tmp_path / "conformal.json").write_text(
        '{"fits": {"point": {"rules": {"aps@0.1": {}, "lac@0.2": {}, "lac@0.05": {}}}}}'
    )
    assert fitted_alphas(tmp_path) == {"point": [0.05, 0.2]}


def test_an_unfitted_alpha_names_the_command_and_no_server_path(client, experiment):
    r = client.post("/api/score", json={"run": "baseline", "text": "ab", "conformal": 0.3})
    assert r.status_code == 400 and str(experiment) not in r.text
    assert r.json()["error"] == (
        "run 'baseline' has no conformal set at alpha 0.3 for the 'default' prediction (fitted: alpha 0.1, 0.2): "
        "fit it with `gptv conformal RUN --alpha 0.3` (RUN: the folder of run 'baseline')"
    )


BAD = [
    ("/api/generate", {"run": "nope", "prompt": "x"}, 404, "unknown run 'nope'"),
    ("/api/generate", {"run": "baseline", "prompt": ""}, 422, "prompt"),
    ("/api/generate", {"run": "baseline", "prompt": "x" * 5000}, 422, "at most 4000"),
    ("/api/generate", {"run": "baseline", "prompt": "ab", "temperature": -1}, 422, "temperature"),
    ("/api/generate", {"run": "baseline", "prompt": "ab", "top_p": 0}, 422, "top_p"),
    ("/api/generate", {"run": "baseline", "prompt": "ab", "top_k": 0}, 422, "top_k"),
    ("/api/generate", {"run": "baseline", "prompt": "ab", "max_new_tokens": 100000}, 422, "max_new_tokens"),
    ("/api/generate", {"run": "baseline", "prompt": "ab", "repetition_penalty": 0}, 422, "repetition_penalty"),
    ("/api/generate", {"run": "baseline", "prompt": "ab", "tau": 2}, 422, "tau"),
    ("/api/generate", {"run": "baseline", "prompt": "ab", "temprature": 1}, 422, "temprature: Extra inputs"),
    (
        "/api/generate",
        {"run": "baseline", "prompt": "ab", "unknown": "skip", "method": "sequence"},
        400,
        "deterministic head",
    ),
    ("/api/generate", {"run": "baseline", "prompt": "ab", "method": "bogus"}, 400, "unknown method 'bogus'"),
    ("/api/generate", {"run": "baseline", "prompt": "qqqzzz"}, 400, "not in the word vocabulary"),
    ("/api/generate", {"run": "baseline", "prompt": 5}, 422, "prompt"),
    ("/api/score", {"run": "sig", "text": ""}, 422, "text"),
    ("/api/score", {"run": "sig", "text": "x" * 20001}, 422, "at most 20000"),
    ("/api/score", {"run": "sig", "text": "ab", "mc_samples": -1}, 422, "mc_samples"),
    ("/api/score", {"run": "baseline", "text": "qqq"}, 400, "not in the word vocabulary"),
    ("/api/score", {"run": "bayes", "text": "ab", "method": "sequence"}, 400, "not for scoring text"),
    ("/api/score", {"run": "bayes", "text": "ab", "bayes_mode": "mean"}, 422, "bayes_mode: Extra inputs"),
    ("/api/score", {"run": "baseline", "text": "ab", "conformal": "0.1"}, 422, "conformal: Input should be"),
    ("/api/score", {"run": "baseline", "text": "ab", "conformal": 1.0}, 422, "conformal: Input should be less"),
    ("/api/score", {"run": "baseline", "text": "ab", "conformal": 0}, 422, "conformal: Input should be greater"),
    ("/api/score", {"run": "bayes", "text": "ab", "conformal": 0.1}, 400, "for the 'default' prediction (none"),
    ("/api/score", {"run": "bayes", "text": "ab", "conformal": 0.1, "mc_samples": 0}, 400, "0.1 --mc-samples 0"),
    ("/api/score", {"run": "bayes", "text": "ab", "conformal": 0.1, "method": "bogus"}, 400, "unknown method 'bogus'"),
    ("/api/generate", {"run": "baseline", "prompt": "ab", "conformal": 0.1}, 422, "conformal: Extra inputs"),
]


@pytest.mark.parametrize("path,body,status,message", BAD, ids=[f"{p}-{m}" for p, _, _, m in BAD])
def test_bad_requests_are_4xx_with_a_clear_message(client, path, body, status, message):
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"] and "Traceback" not in r.text


def test_malformed_and_oversized_bodies(client):
    r = client.post("/api/score", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["error"]
    r = client.post("/api/score", content=b"x" * ((1 << 20) + 1), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "request body over" in r.json()["error"]


def test_chunked_bodies_are_bounded_too(client):
    """Transfer-Encoding: chunked has no Content-Length: the guard counts what it reads and stops
    at the limit instead of reading the whole body first (a 413, not pydantic's 422 after it)."""
    r = client.post("/api/score", content=iter([b"x" * (1 << 16)] * 64), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "request body over" in r.json()["error"]
    # at the ASGI level: the app stops asking for chunks once past the limit
    read, sent = [], []

    async def receive():
        read.append(1)
        return {"type": "http.request", "body": b"x" * (1 << 16), "more_body": len(read) < 64}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/api/score", "raw_path": b"/api/score", "query_string": b"", "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
    }  # fmt: skip
    asyncio.run(client.app(scope, receive, send))
    assert sent[0]["status"] == 413 and len(read) <= 17  # 1 MiB = 16 chunks of 64 KiB


@pytest.mark.parametrize(
    "field,value",
    [("max_new_tokens", "5"), ("max_new_tokens", 5.0), ("top_k", "2"), ("greedy", 1), ("seed", "1"), ("tau", "0.5")],
)
def test_json_api_types_are_strict(client, words, field, value):
    r = client.post("/api/generate", json={"run": "baseline", "prompt": words, field: value})
    assert r.status_code == 422 and r.json()["error"].startswith(field), r.text


def test_runs_list_discloses_no_server_path(client, experiment):
    text = client.get("/api/runs").text
    assert str(experiment) not in text and '"path"' not in text
    assert {r["name"] for r in json.loads(text)["runs"]} == set(VARIANTS)


def test_unexpected_errors_are_json_500_without_traceback(runs, monkeypatch):
    loaded, report = runs

    def broken(*a, **k):
        raise KeyError("boom")

    monkeypatch.setattr(loaded["sig"].lm, "score_many", broken)
    with TestClient(create_app(loaded, report), raise_server_exceptions=False) as c:
        r = c.post("/api/score", json={"run": "sig", "text": "ab"})
    assert r.status_code == 500 and r.json() == {"error": "internal error (KeyError; see the server log)"}


def test_busy_server_answers_503(runs, words):
    loaded, report = runs
    app = create_app(loaded, report, max_pending=2)
    with TestClient(app) as c:
        app.state.pool.pending = 2  # two requests in progress
        r = c.post("/api/score", json={"run": "sig", "text": words})
        assert r.status_code == 503 and "server busy" in r.json()["error"]
        app.state.pool.pending = 0
        assert c.post("/api/score", json={"run": "sig", "text": words}).status_code == 200
        assert app.state.pool.pending == 0  # released after the request
        prompt = " ".join(words.split()[:2])
        assert sse(c.post("/api/generate", json={"run": "sig", "prompt": prompt, "max_new_tokens": 3}))[-1][0] == "done"
        assert app.state.pool.pending == 0  # released after the stream
        assert c.post("/api/generate", json={"run": "sig", "prompt": "qqq"}).status_code == 400
        assert app.state.pool.pending == 0  # and after a refused one


def test_other_host_names_are_refused(runs):
    loaded, report = runs
    app = create_app(loaded, report, allowed_hosts=["127.0.0.1", "localhost"])
    with TestClient(app, base_url="http://127.0.0.1") as c:
        assert c.get("/api/runs").status_code == 200
        assert c.get("/api/runs", headers={"host": "attacker.example"}).status_code == 400


# ----------------------------------------------------------------------------------- files served


def test_page_assets_and_report_files(client):
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]  # nothing from a CDN can load
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css"), ("favicon.svg", "svg")):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"]
    assert client.get("/report/curves.png").headers["content-type"] == "image/png"
    rep = client.get("/api/report").json()
    assert rep["plots"] == ["curves.png"] and "<table>" in rep["html"] and "<td>49.7</td>" in rep["html"]
    assert "<script>" not in rep["html"] and "&lt;script&gt;" in rep["html"]  # raw HTML is escaped


def test_no_file_outside_the_runs_report_and_assets(experiment, runs, tmp_path):
    secret = tmp_path / "secret.md"
    secret.write_text("secret")
    link = experiment / "leak.md"
    link.symlink_to(secret)  # a symlink out of the experiment folder
    try:
        report = Report.scan(experiment)
        assert "leak.md" not in report.files
        with TestClient(create_app(runs[0], report)) as c:
            for url in [
                "/report/leak.md",
                "/report/../runs/sig/config.json",
                "/report/..%2fruns%2fsig%2fconfig.json",
                "/report/%2e%2e/%2e%2e/etc/passwd",
                "/report/%2Fetc%2Fpasswd",
                "/report//etc/passwd",
                "/static/../../api.py",
                "/static/%2e%2e%2fapp.py",
                "/static/app.py",
                "/static/%2Fetc%2Fpasswd",
                "/etc/passwd",
                "/runs/sig/config.json",
                f"/report/{secret}",
                "/static/..%5c..%5capp.py",
            ]:
                r = c.get(url)
                assert r.status_code == 404 and "secret" not in r.text and "root:" not in r.text, url
    finally:
        link.unlink()


# ----------------------------------------------------------------------------------- the worker pool


def test_a_slow_stream_does_not_block_other_requests():
    """One worker: a 0.4 s generation is advanced in slices, so a short call made while it runs
    finishes long before the generation does."""

    def slow_tokens():
        for i in range(20):
            time.sleep(0.02)
            yield i

    async def scenario() -> tuple[float, float, list[int]]:
        pool = ModelPool(workers=1, max_pending=4, slice_s=0.05)
        t0 = time.perf_counter()
        got: list[int] = []

        async def consume() -> float:
            async for batch in pool.stream(slow_tokens()):
                got.extend(batch)
            return time.perf_counter() - t0

        stream = asyncio.create_task(consume())
        await asyncio.sleep(0.03)
        await pool.call(lambda: None)
        quick = time.perf_counter() - t0
        slow = await stream
        pool.shutdown()
        return quick, slow, got

    quick, slow, got = asyncio.run(scenario())
    assert got == list(range(20))
    assert slow >= 0.4 and quick < slow - 0.15


def test_stream_errors_reach_the_consumer_and_admission_is_bounded():
    def failing():
        yield 1
        raise ValueError("bad option")

    async def scenario() -> list[int]:
        pool = ModelPool(workers=1, max_pending=1)
        got = []
        with pytest.raises(ValueError, match="bad option"):
            async for batch in pool.stream(failing()):
                got.extend(batch)
        with pool.admit():
            with pytest.raises(Busy, match="server busy"):
                pool.acquire()
        assert pool.pending == 0
        pool.shutdown()
        return got

    assert asyncio.run(scenario()) == [1]


# ----------------------------------------------------------------------------------- continuous batching


def _concurrently(app, bodies: list[dict], path: str = "/api/generate") -> list:
    """POST ``path`` with every body at once, on one event loop (responses read whole)."""
    import httpx

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
            responses = await asyncio.gather(*(c.post(path, json=b) for b in bodies))
        app.state.pool.shutdown()
        return responses

    return asyncio.run(scenario())


def test_concurrent_generations_share_a_batch_and_give_the_library_tokens(runs, words, monkeypatch):
    """Different prompts and options (greedy, top-k, top-p, penalty, set mode, seeds) decode as one
    batch per run and predictive, and each request gets what the library gives it alone."""
    loaded, report = runs
    sizes: list[int] = []
    step = Decoder.step

    def counted(self):
        touched = step(self)
        sizes.append(len(touched))
        return touched

    monkeypatch.setattr(Decoder, "step", counted)
    w = words.split()
    options = [
        {"greedy": True},
        {"temperature": 0.7, "top_k": 5},
        {"temperature": 1.2, "top_p": 0.8},
        {"repetition_penalty": 1.5, "temperature": 0.9},
        {"sig_mode": "set", "tau": 0.2},
        {"temperature": 2.0},
    ]
    bodies = [
        {
            "run": run,
            "prompt": " ".join(w[: k + 1]),
            "max_new_tokens": 40 + 3 * k,
            "seed": k,
            "top_n": 3,
            "stop_at_eot": False,
            **o,
        }
        for run in ("sig", "bayes")
        for k, o in enumerate(options)
    ]
    bodies.append(
        {
            "run": "bayes",
            "prompt": w[0],
            "max_new_tokens": 30,
            "mc_samples": 3,
            "seed": 9,
            "stop_at_eot": False,
        }
    )
    responses = _concurrently(create_app(loaded, report, workers=2), bodies)
    for body, r in zip(bodies, responses):
        events = sse(r)
        assert r.status_code == 200 and events[-1][0] == "done", r.text
        tokens = [d for e, d in events if e == "token"]
        opts = {k: v for k, v in body.items() if k not in ("run", "prompt", "max_new_tokens")}
        ref = loaded[body["run"]].lm.generate_details(body["prompt"], body["max_new_tokens"], **opts)
        assert [t["id"] for t in tokens] == [t.id for t in ref.tokens] and len(tokens) == body["max_new_tokens"]
        assert [t["logprob"] for t in tokens] == pytest.approx([t.logprob for t in ref.tokens], abs=1e-5)
    assert max(sizes) >= 4  # requests did share a batch


def test_concurrent_scores_share_a_pass_and_a_refused_text_fails_alone(runs, words, monkeypatch):
    """Score requests with the same options are scored in one score_many call; each answer equals
    scoring its text alone, and a text the model refuses is a 400 for that request only."""
    loaded, report = runs
    lm = loaded["baseline"].lm
    calls: list[int] = []
    many = type(lm).score_many

    def counted(self, texts, **kw):
        calls.append(len(texts))
        return many(self, texts, **kw)

    monkeypatch.setattr(type(lm), "score_many", counted)
    w = words.split()
    bodies = [{"run": "baseline", "text": " ".join(w[k : k + 6 + k]), "top_n": 3} for k in range(6)]
    bodies.append({"run": "baseline", "text": "qqqq unknownword", "top_n": 3, "unknown": "error"})
    responses = _concurrently(create_app(loaded, report, workers=1), bodies, path="/api/score")
    for body, r in zip(bodies[:-1], responses):
        assert r.status_code == 200, r.text
        alone = lm.score(body["text"], top_n=3)
        assert [t["id"] for t in r.json()["tokens"]] == [t.id for t in alone]
        assert [t["logprob"] for t in r.json()["tokens"]] == pytest.approx([t.logprob for t in alone], abs=1e-5)
    assert responses[-1].status_code == 400 and "unknownword" in responses[-1].json()["error"]
    assert max(calls) >= 3  # concurrent requests did share a call


def test_a_short_request_is_not_held_by_a_long_one_and_a_gone_client_leaves_the_batch(runs, words):
    loaded, _ = runs
    run = loaded["baseline"]
    prompt = " ".join(words.split()[:3])

    async def scenario():
        pool = ModelPool(workers=1)
        batcher = Batcher(pool)
        long = batcher.submit(run, run.lm.token_stream(prompt, 1000, seed=0, stop_at_eot=False))
        await anext(aiter(long))
        short = batcher.submit(run, run.lm.token_stream(prompt, 5, seed=1, stop_at_eot=False))
        got = [t async for batch in short for t in batch]
        assert len(got) == 5 and not long.tokens.row.done  # the short one ended while the long one decodes
        long.cancel()
        async for _ in long:
            pass
        while batcher.batches:  # the idle batch goes
            await asyncio.sleep(0.01)
        pool.shutdown()
        return long.tokens.row.gen

    gen = asyncio.run(scenario())
    assert gen.finish_reason == "cancelled" and len(gen.tokens) < 1000


def test_a_failing_batch_answers_its_requests_and_the_next_batch_works(runs, words, monkeypatch):
    loaded, report = runs
    prompt = words.split()[0]

    def broken(self, draws):
        raise RuntimeError("boom")

    with monkeypatch.context() as m:
        m.setattr(Decoder, "_choose", broken)
        app = create_app(loaded, report)
        with TestClient(app, raise_server_exceptions=False) as c:
            r = c.post("/api/generate", json={"run": "sig", "prompt": prompt, "max_new_tokens": 3})
            assert r.status_code == 500 and r.json() == {"error": "internal error (RuntimeError; see the server log)"}
            assert app.state.pool.pending == 0
            m.undo()
            events = sse(c.post("/api/generate", json={"run": "sig", "prompt": prompt, "max_new_tokens": 3}))
            assert [e for e, _ in events] == ["token"] * 3 + ["done"]


# ----------------------------------------------------------------------------------- a real browser


@pytest.fixture(scope="module")
def chromium() -> str:
    """A Chromium executable (GPTV_CHROMIUM, or one on PATH) and Playwright to drive it; else skip
    (or fail, where GPTV_REQUIRE_BROWSER=1 says the browser test must run, as in CI)."""
    missing = pytest.fail if os.environ.get("GPTV_REQUIRE_BROWSER") == "1" else pytest.skip
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing("playwright is not installed (pip install -e '.[dev]')")
    for name in (os.environ.get("GPTV_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    missing("no Chromium installed (apt-get install chromium)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(chromium, experiment, tmp_path_factory):
    """``gptv serve`` on an experiment folder with two tiny runs, in a subprocess on a free port."""
    root = tmp_path_factory.mktemp("two-runs")
    for name in ("report.md", "curves.png"):
        shutil.copy(experiment / name, root / name)
    for v in ("baseline", "bayes"):
        shutil.copytree(experiment / "runs" / v, root / "runs" / v)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gptvariants", "serve", str(root), "--port", str(port), "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url + "/api/runs", timeout=1).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"gptv serve did not start:\n{proc.stdout.read()}")
            time.sleep(0.2)
    log: list[str] = []
    threading.Thread(target=lambda: log.extend(proc.stdout), daemon=True).start()
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    assert not any("Traceback" in line for line in log), "".join(log)


def test_the_page_in_headless_chromium(chromium, server, words):
    """Generate and score in two runs' columns; the tokens are coloured, the legend is drawn and
    hovering a token shows its probability, alternatives, (Bayesian) per-draw probabilities and
    (scored with conformal sets) its set's size;
    the report's table sorts and its plot loads. No script error on the way."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(server)
            page.wait_for_selector("body[data-ready=true]")
            _check_generate(page, " ".join(words.split()[:3]))
            _check_score(page, words, server)
            _check_report(page)
        finally:
            browser.close()
    assert not errors, errors


def _check_generate(page, prompt: str) -> None:
    """One column per run, tokens streamed and coloured, the legend, a token's details on hover."""
    from playwright.sync_api import expect

    page.fill("#gen-prompt", prompt)
    page.fill("#o-max_new_tokens", "12")
    page.click("#gen-go")
    columns = page.locator("#gen-columns .column")
    expect(columns).to_have_count(2)
    for i in range(2):
        expect(columns.nth(i).locator(".stat", has_text="ended")).to_be_visible(timeout=20_000)
        tokens = columns.nth(i).locator(".tok")
        assert tokens.count() >= 1
        expect(tokens.first).to_have_css("background-color", re.compile(r"^rgb\("))  # painted at the next frame
    legend = page.locator("#gen-legend")
    expect(legend).to_contain_text("surprisal")
    gradient = legend.locator(".bar").evaluate("e => getComputedStyle(e).backgroundImage")
    assert gradient.startswith("linear-gradient")
    page.locator('#gen-columns .column[data-run="bayes"] .tok').first.hover()
    tip = page.locator("#tip")
    expect(tip).to_be_visible()
    expect(tip).to_contain_text("probability")
    expect(tip).to_contain_text("Top alternatives")
    expect(tip).to_contain_text("posterior draws")
    assert tip.locator(".alt").count() == 8
    page.select_option("#gen-colour", "mi")
    expect(legend).to_contain_text("mutual information")


def _check_score(page, text: str, url: str) -> None:
    """A held-out text in both runs, with totals and a sparkline; conformal sets at an alpha fitted
    for baseline only: its tokens' set sizes (tooltip, colour) and those outside their set marked."""
    from playwright.sync_api import expect

    page.click("button[data-view=score]")
    alpha = page.locator("#s-conformal")
    expect(alpha).to_be_enabled()
    assert alpha.locator("option").evaluate_all("os => os.map(o => o.value)") == ["", "0.1", "0.2"]
    page.uncheck("#score-runs input[value=baseline]")  # bayes alone has no fitted sets
    expect(alpha).to_be_disabled()
    page.check("#score-runs input[value=baseline]")
    alpha.select_option("0.1")
    page.fill("#score-text", text)
    page.click("#score-go")
    columns = page.locator("#score-columns .column")
    expect(columns).to_have_count(2)
    for i in range(2):
        expect(columns.nth(i).locator(".stat", has_text="perplexity")).to_be_visible(timeout=20_000)
        assert columns.nth(i).locator(".tok").count() >= 10
        expect(columns.nth(i).locator("polyline.avg")).to_have_attribute("points", re.compile(r"\d"))
    columns.nth(0).locator(".tok").nth(3).hover()
    expect(page.locator("#tip")).to_contain_text("surprisal")
    expect(page.locator("#score-legend")).to_contain_text("nats")
    baseline, bayes = (
        page.locator('#score-columns [data-run="baseline"]'),
        page.locator('#score-columns [data-run="bayes"]'),
    )
    expect(baseline.locator(".stat", has_text="mean set (α 0.1)")).to_be_visible()
    expect(bayes.locator(".col-foot")).to_contain_text("no conformal set at α 0.1 for this run: gptv conformal RUN")
    body = json.dumps({"run": "baseline", "text": text, "conformal": 0.1}).encode()
    request = urllib.request.Request(url + "/api/score", body, {"Content-Type": "application/json"})
    want = json.loads(urllib.request.urlopen(request, timeout=20).read())["tokens"]
    assert baseline.locator(".tok.out-of-set").count() == sum(not t["in_conformal_set"] for t in want)
    baseline.locator(".tok").nth(3).hover()
    n = want[3]["conformal_set_size"]
    expect(page.locator("#tip")).to_contain_text(f"conformal set (α 0.1){n} token{'' if n == 1 else 's'}")
    page.select_option("#score-colour", "conformal")
    expect(page.locator("#score-legend")).to_contain_text("conformal set size")
    assert baseline.locator(".tok.na").count() == 0 and bayes.locator(".tok.na").count() >= 10


def _check_report(page) -> None:
    """The experiment's table (sortable) and its plot."""
    from playwright.sync_api import expect

    page.click("button[data-view=report]")
    table = page.locator("#report-body table")
    expect(table).to_contain_text("49.7")
    table.locator("th", has_text="Perplexity").click()
    expect(table.locator("tbody tr").first).to_contain_text("bayes")  # 49.7 < 50.1
    expect(page.locator("#report-plots img")).to_have_attribute("src", "/report/curves.png")
    assert page.locator("#report-plots img").evaluate("e => e.naturalWidth") > 0
