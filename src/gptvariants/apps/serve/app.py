"""The playground's web application: the page, its assets, the report files and the JSON API.

    GET  /api/runs       the runs (variant, head, sizes, the conformal alphas fitted), whether there is
                         a report, the limits
    POST /api/generate   server-sent events: one ``token`` event per generated token, then ``done``
                         (concurrent generations of a run decode as one batch: ``batcher.Batcher``)
    POST /api/score      per-token scores of a text, nats/token and perplexity; with ``conformal``
                         (an alpha the run lists), each token's conformal set size and whether
                         the set holds it, and their mean and coverage
    GET  /api/report     the experiment's report.md as HTML, and its plots
    GET  /report/NAME    one report file (an allowlist built at startup; nothing else is served)

Bad requests are answered with a 4xx and ``{"error": "..."}`` naming the problem; model work
runs on ``worker.ModelPool``, off the event loop.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from ..api import TokenRecord
from .batcher import Batcher, RowStream, ScoreBatcher
from .runs import Report, Run
from .schemas import LIMITS, MAX_SET_TEXTS, GenerateRequest, ScoreRequest
from .worker import Busy, ModelPool

log = logging.getLogger("gptvariants.apps.serve")

MAX_BODY_BYTES = 1 << 20
ASSET_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; object-src 'none'; "
    "base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


_JSON = json.JSONEncoder(ensure_ascii=False)  # made once: json.dumps with options builds one per call


def token_json(rec: TokenRecord) -> dict[str, Any]:
    """A token for the page: TokenRecord.to_dict() plus surprisal (-log p, nats), the sigmoid set's
    size ``set_size`` (its texts listed up to MAX_SET_TEXTS) and, when scored with ``conformal``,
    ``conformal_set_size`` and ``in_conformal_set`` (the record's set_size and in_set, renamed so
    that a sigmoid run can show both sets)."""
    d = rec.to_dict()
    d["surprisal"] = -rec.logprob
    if rec.set_size is not None:
        d["conformal_set_size"], d["in_conformal_set"] = d.pop("set_size"), d.pop("in_set")
    if rec.set is not None:
        d["set_size"] = len(rec.set)
        d["set"] = rec.set[:MAX_SET_TEXTS]
    return d


def load_assets() -> dict[str, tuple[bytes, str]]:
    """The page's files (package data), read once: name -> (content, media type)."""
    assets = {}
    for f in resources.files("gptvariants.apps.serve").joinpath("static").iterdir():
        suffix = "." + f.name.rsplit(".", 1)[-1]
        if f.is_file() and suffix in ASSET_TYPES:
            assets[f.name] = (f.read_bytes(), ASSET_TYPES[suffix])
    return assets


def render_report(report: Report) -> str:
    """report.md as HTML (raw HTML in the markdown is escaped, not passed through)."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    return md.render(report.files["report.md"].read_text(encoding="utf-8", errors="replace"))


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {_JSON.encode(data)}\n\n"


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _summary(records: list[TokenRecord]) -> dict[str, Any]:
    """Totals over scored tokens: nats/token (mean surprisal), perplexity, mean entropy and MI, and
    with conformal sets their mean size and coverage (the share of tokens inside their set)."""
    n = len(records)
    sizes = [r.set_size for r in records if r.set_size is not None]
    sets = {
        "mean_set_size": sum(sizes) / len(sizes) if sizes else None,
        "set_coverage": sum(bool(r.in_set) for r in records) / len(sizes) if sizes else None,
    }
    if not records:
        return {"n_tokens": 0, **dict.fromkeys(("nats_per_token", "perplexity", "mean_entropy", "mean_mi")), **sets}
    nats = -sum(r.logprob for r in records) / n
    mis = [r.mi for r in records if r.mi is not None]
    return {
        "n_tokens": n,
        "nats_per_token": nats,
        "perplexity": math.exp(min(nats, 700.0)),
        "mean_entropy": sum(r.entropy for r in records) / n,
        "mean_mi": sum(mis) / len(mis) if mis else None,
        **sets,
    }


def create_app(
    runs: dict[str, Run],
    report: Report | None = None,
    *,
    workers: int = 4,
    max_pending: int = 64,
    allowed_hosts: list[str] | None = None,
) -> FastAPI:
    """The application over loaded runs (``runs.load_runs``) and an optional experiment report.
    ``allowed_hosts``: Host header names accepted (a page on another site that resolves its
    name to 127.0.0.1 then cannot use the server); None accepts any."""
    pool = ModelPool(workers, max_pending)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        pool.shutdown()  # queued slices are cancelled: a generation still running stops within one slice

    app = FastAPI(title="gptvariants playground", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.add_middleware(Guard)
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    app.state.pool = pool
    _add_error_handlers(app)
    _add_files(app, report)
    _add_model_api(app, runs, pool, Batcher(pool), ScoreBatcher(pool, _scored_many), has_report=report is not None)
    return app


def _add_files(app: FastAPI, report: Report | None) -> None:
    """The page, its assets, the report and its files: each looked up by name in a table made
    here, never joined to a path from the request."""
    assets = load_assets()
    report_html = render_report(report) if report else None

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return Response(assets["index.html"][0], media_type=assets["index.html"][1])

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in assets:
            raise HTTPException(404, f"no asset {name!r}")
        body, media = assets[name]
        return Response(body, media_type=media, headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return await static("favicon.svg")

    @app.get("/api/report")
    async def get_report() -> dict[str, Any]:
        if report is None:
            raise HTTPException(404, "no report: serve an experiment folder (gptv serve runs/experiment)")
        return {"html": report_html, "plots": report.plots, "files": sorted(report.files), "root": report.root.name}

    @app.get("/report/{name}", include_in_schema=False)
    async def report_file(name: str) -> Response:
        if report is None or name not in report.files:
            raise HTTPException(404, f"no report file {name!r}")
        return FileResponse(report.files[name])


def _add_model_api(
    app: FastAPI, runs: dict[str, Run], pool: ModelPool, batcher: Batcher, scores: ScoreBatcher, has_report: bool
) -> None:
    """GET /api/runs, POST /api/score, POST /api/generate."""

    def get_run(name: str) -> Run:
        if name not in runs:
            raise HTTPException(404, f"unknown run {name!r}; this server has {', '.join(runs)}")
        return runs[name]

    @app.get("/api/runs")
    async def list_runs() -> dict[str, Any]:
        return {"runs": [r.info() for r in runs.values()], "report": has_report, "limits": LIMITS}

    @app.post("/api/score")
    async def score(req: ScoreRequest) -> Response:
        run = get_run(req.run)
        with pool.admit():
            try:  # concurrent requests with the same options share one pass; answers are built on the worker
                if req.conformal is not None:  # checked here: the library's message names server paths
                    run.check_conformal(req.conformal, req.method, req.mc_samples)
                key = (run.name, tuple(sorted(req.options().items())))
                return Response(await scores.score(run, key, req), media_type="application/json")
            except (ValueError, TypeError) as e:
                raise HTTPException(400, str(e)) from None

    @app.post("/api/generate")
    async def generate(req: GenerateRequest) -> StreamingResponse:
        run = get_run(req.run)
        pool.acquire()
        stream = None
        try:  # the first tokens are computed before answering, so that bad options are a 4xx, not a broken stream
            t0 = time.perf_counter()
            # on the event loop: tokenizing a prompt (<= 4,000 characters) is quick, a thread hop is not
            tokens = run.lm.token_stream(req.prompt, req.max_new_tokens, **req.sampling())
            stream = batcher.submit(run, tokens)
            records = aiter(stream)
            first: list[TokenRecord] = await anext(records, [])
        except (ValueError, TypeError) as e:
            pool.release()
            raise HTTPException(400, str(e)) from None
        except BaseException:
            if stream is not None:
                stream.cancel()
            pool.release()
            raise
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(
            _events(pool, run, req, stream, first, records, t0), media_type="text/event-stream", headers=headers
        )


def _scored_many(run: Run, reqs: list[ScoreRequest]) -> list[bytes]:
    """The JSON answers of POST /api/score for requests with the same options, scored together.
    ``prefix``: the start of a text that has no score; ``seconds``: the shared pass's time.
    Encoded here, on the worker, with json.dumps: a returned dict is validated against the return
    type and then dumped on the event loop, about 1 ms for 200 tokens with 8 alternatives against
    0.5 ms here."""
    t0 = time.perf_counter()
    scored = run.lm.score_many([r.text for r in reqs], **reqs[0].options())
    seconds = time.perf_counter() - t0
    return [
        json.dumps(_answer(run, req, records, seconds), allow_nan=False, separators=(",", ":")).encode()
        for req, records in zip(reqs, scored)
    ]


def _answer(run: Run, req: ScoreRequest, records: list[TokenRecord], seconds: float) -> dict[str, Any]:
    scored = "".join(r.text for r in records)
    prefix = req.text[: len(req.text) - len(scored)] if req.text.endswith(scored) else ""
    return {
        "run": run.name,
        "prefix": prefix,
        "tokens": [token_json(r) for r in records],
        **_summary(records),
        "seconds": seconds,
    }


async def _events(
    pool: ModelPool,
    run: Run,
    req: GenerateRequest,
    stream: RowStream,
    first: list[TokenRecord],
    records: AsyncIterator[list[TokenRecord]],
    t0: float,
) -> AsyncIterator[str]:
    """The SSE stream of one generation: ``token`` events, then ``done`` (or ``error``)."""
    done: list[TokenRecord] = list(first)
    first_ms = (time.perf_counter() - t0) * 1e3
    try:
        if first:
            yield "".join(_sse("token", token_json(rec)) for rec in first)
            async for batch in records:  # one write per batch of tokens
                done.extend(batch)
                yield "".join(_sse("token", token_json(rec)) for rec in batch)
        seconds = time.perf_counter() - t0
        reason = "length" if len(done) >= req.max_new_tokens else "stop"
        yield _sse(
            "done",
            {
                "run": run.name,
                "finish_reason": reason,
                "seconds": seconds,
                "first_token_ms": first_ms,
                "tokens_per_s": len(done) / seconds if seconds > 0 else None,
                **_summary(done),
            },
        )
    except (ValueError, TypeError) as e:
        yield _sse("error", {"error": str(e)})
    except Exception:
        log.exception("generation failed on run %s", run.name)
        yield _sse("error", {"error": "internal error (see the server log)"})
    finally:  # also when the client went away: its row leaves the batch at the next step
        stream.cancel()
        pool.release()


class Guard:
    """ASGI middleware: refuse bodies over MAX_BODY_BYTES (413) and add SECURITY_HEADERS to every response."""

    def __init__(self, app) -> None:
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        size = dict(scope["headers"]).get(b"content-length")
        if size is not None and (not size.isdigit() or int(size) > MAX_BODY_BYTES):
            return await _error(413, f"request body over {MAX_BODY_BYTES} bytes")(scope, receive, send)
        started = False
        read = 0

        async def bounded_receive():
            # Content-Length is absent with Transfer-Encoding: chunked: count what is read instead
            nonlocal read
            message = await receive()
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
                if read > MAX_BODY_BYTES:
                    raise BodyTooLarge()
            return message

        async def send_with_headers(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = list(message.get("headers", [])) + self.headers
            await send(message)

        try:
            await self.app(scope, bounded_receive, send_with_headers)
        except BodyTooLarge as e:  # read outside a route's handlers (they answer it themselves)
            if started:
                raise
            await _error(413, str(e.detail))(scope, receive, send_with_headers)


class BodyTooLarge(StarletteHTTPException):
    """Raised from ``Guard``'s receive when a body without Content-Length (chunked) passes
    MAX_BODY_BYTES: an HTTPException, so that FastAPI's body reader passes it on as a 413."""

    def __init__(self) -> None:
        super().__init__(413, f"request body over {MAX_BODY_BYTES} bytes")


def _add_error_handlers(app: FastAPI) -> None:
    """Every error is ``{"error": message}``: validation errors name the field, and an unexpected
    exception is a 500 without a traceback (logged on the server)."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors():
            where = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
            parts.append(f"{where}: {e.get('msg', 'invalid')}")
        return _error(422, "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Busy)
    async def busy(request: Request, exc: Busy) -> JSONResponse:
        return _error(503, str(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}; see the server log)")
