"""The FastAPI application of ``transferkit serve``.

Routes: ``GET /`` (the page), ``GET /health``, ``GET /models``,
``POST /models/{name}/predict`` (multipart image upload(s) in field ``file``, or
JSON ``{"image": BASE64}``, ``{"images": [...]}``, ``{"text": ...}``,
``{"texts": [...]}``), ``/docs`` and ``/openapi.json``.

Safety: with a token every route but ``/``, ``/health`` and the docs needs
``Authorization: Bearer TOKEN`` (compared in constant time); request bodies
over the upload limit get 413 before they are read in full; a body that
has not arrived in full within the timeout of the request's start gets 408
(however it trickles in); every upload is decoded
through :func:`transferkit.core.images.decode_image_bytes` (bad image, bomb:
400 with one sentence); a request that waits longer than the request timeout
for its model gets 503.  No route takes a server path: model names are keys of
a dictionary filled at start.  CORS headers are never sent.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import os
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse

from transferkit.errors import TransferkitError
from transferkit.serve.batching import Batcher
from transferkit.serve.handlers import Handler, Input, ServeOptions, load_handler, split_spec

MAX_INPUTS = 64  # inputs in one request


@dataclass
class ServeSettings:
    """Everything ``transferkit serve`` starts with (JSON-able, so ``--workers N`` processes get the same).

    Attributes:
        models: ``DIR`` or ``NAME=DIR`` per model.
        max_batch: largest batch of concurrent requests (1: no batching; None: :func:`default_max_batch`).
        max_wait_ms: how long a request waits for others to share its batch.
        token: required as ``Authorization: Bearer TOKEN`` when set.
        max_upload_mb: largest request body, in MB (413 beyond).
        timeout_s: longest wait for a model's answer (503 beyond); also the longest time to send the body (408).
    """

    models: list[str] = field(default_factory=list)
    max_batch: int | None = None
    max_wait_ms: float = 5.0
    token: str | None = None
    max_upload_mb: float = 20.0
    timeout_s: float = 30.0
    device: str = "auto"
    engine: str = "auto"
    galleries: dict[str, str] = field(default_factory=dict)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def default_max_batch(device: str = "auto") -> int:
    """32 where the models run on a GPU; 8 on a CPU, where larger batches measured no faster and slower in the
    tail (BENCHMARKS.md, issue 22)."""
    if device.startswith("cuda"):
        return 32
    if device == "auto":
        import torch

        return 32 if torch.cuda.is_available() else 8
    return 8


def load_models(settings: ServeSettings) -> dict[str, Handler]:
    """Load every model once (errors name the directory); names must be unique."""
    opts = ServeOptions(device=settings.device, engine=settings.engine, max_upload_bytes=settings.max_upload_bytes,
                        galleries=dict(settings.galleries))
    handlers: dict[str, Handler] = {}
    for spec in settings.models:
        name, path = split_spec(spec)
        if name in handlers:
            raise TransferkitError(f"Two models are called {name!r}; name them with NAME=DIR.")
        handlers[name] = load_handler(name, path, opts)
    if not handlers:
        raise TransferkitError("Give at least one model directory to serve.")
    return handlers


def page_html() -> str:
    """The single page at ``/`` (packaged next to this module; no external URL in it)."""
    return resources.files("transferkit.serve").joinpath("page.html").read_text(encoding="utf-8")


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: 413 for bodies over ``limit`` bytes (declared or counted), 408 for a body that has not
    arrived in full within ``read_timeout`` seconds of the request's start (however it trickles)."""

    def __init__(self, app: Any, limit: int, read_timeout: float):
        self.app, self.limit, self.read_timeout = app, limit, read_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _plain(send, 413, f"The request body is over the {self.limit // (1024 * 1024)} MB upload limit.")
        seen = 0
        started = body_done = False
        loop = asyncio.get_running_loop()
        # one deadline for the whole body, from the request's start: a client that dribbles a byte now and then
        # (slowloris) must not hold the connection longer than one that sends nothing
        deadline = loop.time() + self.read_timeout

        async def limited_receive():
            nonlocal seen, body_done
            if body_done:  # after the body only a disconnect can come: nothing to bound
                return await receive()
            left = deadline - loop.time()
            if left <= 0:
                raise _Stalled()
            try:
                msg = await asyncio.wait_for(receive(), left)
            except asyncio.TimeoutError:
                raise _Stalled() from None
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
                body_done = not msg.get("more_body", False)
            return msg

        async def tracking_send(msg):
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _plain(send, 413, f"The request body is over the {self.limit // (1024 * 1024)} MB upload limit.")
        except _Stalled:
            if not started:
                await _plain(send, 408, f"The request body did not arrive within {self.read_timeout:g} s.")


class _Stalled(Exception):
    pass


async def _plain(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def _docs_assets() -> dict[str, tuple[bytes, str]]:
    """Swagger UI 5's files from the ``swagger-ui-bundle-v2`` package, read once, so ``/docs`` works offline
    (FastAPI's default page loads them from a CDN); empty when the package is absent."""
    try:
        import swagger_ui_bundle
    except ImportError:
        return {}
    from pathlib import Path

    root = Path(swagger_ui_bundle.swagger_ui_path)
    files = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon-32x32.png": "image/png"}
    try:
        return {name: ((root / name).read_bytes(), media) for name, media in files.items()}
    except OSError:
        return {}


def _safe_name(name: str | None, default: str) -> str:
    """What an upload is called in answers: the file name's last part only (it never reaches the filesystem)."""
    if not name:
        return default
    base = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    return "".join(ch for ch in base if ch.isprintable())[:200] or default


def create_app(settings: ServeSettings, handlers: dict[str, Handler] | None = None):
    """The FastAPI app; models are loaded now unless ``handlers`` are given."""
    from contextlib import asynccontextmanager

    from transferkit import __version__

    handlers = handlers if handlers is not None else load_models(settings)
    if settings.max_batch is None:
        settings.max_batch = default_max_batch(settings.device)
    batchers = {name: Batcher(h.run, settings.max_batch, settings.max_wait_ms / 1000.0, name)
                for name, h in handlers.items()}
    page = page_html()
    started_at = time.time()

    @asynccontextmanager
    async def lifespan(app):
        for b in batchers.values():
            b.start()
        yield
        for b in batchers.values():
            await b.stop()

    app = FastAPI(title="transferkit serve", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Predictions of transferkit model directories. Each answer is the JSON that the "
                              "task's CLI prints with --json, one object per input.")
    app.state.handlers, app.state.batchers, app.state.settings = handlers, batchers, settings
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes, read_timeout=settings.timeout_s)

    def check_token(request: Request) -> None:
        if settings.token is None:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), settings.token.encode()):
            raise HTTPException(401, "Missing or wrong token: send the header 'Authorization: Bearer TOKEN'.",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(TransferkitError)
    async def _user_error(request, err: TransferkitError):
        return JSONResponse({"detail": str(err)}, status_code=400)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                                           "style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'",
                                           "X-Content-Type-Options": "nosniff"})

    docs_assets = _docs_assets()

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs() -> HTMLResponse:
        if not docs_assets:
            return HTMLResponse("<!doctype html><title>API docs</title><p>The interactive docs need the "
                                "<code>swagger-ui-bundle-v2</code> package (served from here, offline); the API "
                                "itself is described in <a href=\"openapi.json\">openapi.json</a>.</p>")
        from fastapi.openapi.docs import get_swagger_ui_html

        return get_swagger_ui_html(openapi_url="/openapi.json", title="transferkit serve: API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon-32x32.png",
                                   swagger_ui_parameters={"validatorUrl": None})  # no call to swagger.io

    @app.get("/docs-assets/{name}", include_in_schema=False)
    async def docs_asset(name: str):
        from fastapi.responses import Response

        if name not in docs_assets:  # a fixed list read at start, never a path
            raise HTTPException(404, "Not Found")
        data, media = docs_assets[name]
        return Response(data, media_type=media, headers={"Cache-Control": "max-age=86400"})

    @app.get("/health", summary="Liveness: ok and how many models are loaded")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": len(handlers), "uptime_s": round(time.time() - started_at, 1),
                "auth": settings.token is not None}

    @app.get("/models", summary="The models served: name, task, input kind, classes, input size",
             dependencies=[Depends(check_token)])
    async def models() -> list[dict[str, Any]]:
        return [{**h.info(), "max_batch": settings.max_batch} for h in handlers.values()]

    @app.get("/stats", summary="Batches run per model, by batch size", dependencies=[Depends(check_token)])
    async def stats() -> dict[str, Any]:
        return {name: {str(k): v for k, v in sorted(b.sizes.items())} for name, b in batchers.items()}

    body_doc = {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": {"type": "object", "properties": {
                    "file": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
                "application/json": {"schema": {"type": "object", "additionalProperties": False, "properties": {
                    "image": {"type": "string", "description": "base64 image bytes"},
                    "images": {"type": "array", "items": {"type": "string"}},
                    "text": {"type": "string"}, "texts": {"type": "array", "items": {"type": "string"}},
                    "n": {"type": "integer", "description": "generators: images to draw"},
                    "seed": {"type": "integer"}, "label": {"type": "string", "description": "conditional generators"},
                    "name": {"type": "string", "description": "what the answer calls the input"}}}},
            },
        }
    }

    @app.post("/models/{name}/predict", summary="Predict: one JSON object per input, as the CLI's --json",
              dependencies=[Depends(check_token)], openapi_extra=body_doc)
    async def predict(name: str, request: Request, top_k: int = 5) -> list[dict[str, Any]]:
        handler = handlers.get(name)
        if handler is None:
            raise HTTPException(404, f"No model named {name!r}; GET /models lists them.")
        inputs = await _read_inputs(request, {"top_k": top_k}, handler)
        from starlette.concurrency import run_in_threadpool

        batcher = batchers[name]

        async def one(inp: Input):
            batcher.expect()  # a batch forming now may wait for this input while it decodes
            try:
                prepared = await run_in_threadpool(handler.prepare, inp)  # decode + preprocess off the event loop
            except BaseException:
                batcher.cancel_expect()
                raise
            return await batcher.submit(prepared, expected=True)

        try:
            answers = await asyncio.wait_for(asyncio.gather(*(one(i) for i in inputs)), settings.timeout_s)
            # an input may have several answers (a generator's images): they follow each other in order
            return [row for a in answers for row in (a if isinstance(a, list) else [a])]
        except asyncio.TimeoutError:
            raise HTTPException(503, f"Model {name!r} did not answer within {settings.timeout_s:g} s; try again later.") from None

    async def _read_inputs(request: Request, options: dict[str, Any], handler: Handler) -> list[Input]:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        inputs: list[Input] = []
        if ctype == "multipart/form-data":
            try:
                form = await request.form(max_files=MAX_INPUTS, max_fields=16)
            except (_TooLarge, _Stalled):
                raise
            except Exception as err:  # malformed multipart, too many parts
                raise HTTPException(400, f"Unreadable multipart body ({getattr(err, 'detail', None) or err}).") from None
            for key, value in form.multi_items():
                if key != "file" or isinstance(value, str):
                    raise HTTPException(400, f"Unexpected form field {key!r}: send images in the field 'file'.")
                data = await value.read()
                inputs.append(Input(name=_safe_name(value.filename, f"upload{len(inputs)}"), data=data, options=options))
        elif ctype == "application/json":
            try:
                body = json.loads(await request.body())
            except (ValueError, UnicodeDecodeError):
                raise HTTPException(400, "The request body is not valid JSON.") from None
            inputs = _json_inputs(body, options, handler.kind == "generate")
        else:
            raise HTTPException(415, "Send multipart/form-data with images in the field 'file', or JSON "
                                     "{\"image\": BASE64} / {\"text\": \"...\"}.")
        if not inputs:
            raise HTTPException(400, "The request holds no input: upload an image (field 'file') or send JSON.")
        if len(inputs) > MAX_INPUTS:
            raise HTTPException(400, f"At most {MAX_INPUTS} inputs per request.")
        return inputs

    return app


def _json_inputs(body: Any, options: dict[str, Any], generate: bool = False) -> list[Input]:
    allowed = {"image", "images", "text", "texts", "name", "n", "seed", "label"}
    if not isinstance(body, dict) or set(body) - allowed:
        extra = sorted(set(body) - allowed) if isinstance(body, dict) else []
        raise HTTPException(400, "JSON must be an object with image, images, text, texts, name (or n, seed, label "
                                 "for a generator)" + (f" (unexpected: {', '.join(extra)})." if extra else "."))
    if generate:  # a generator takes options only: how many, which seed, which class
        return [Input(name="sample", options={**options, **{k: body[k] for k in ("n", "seed", "label") if k in body}})]
    base = body.get("name") if isinstance(body.get("name"), str) else None
    out: list[Input] = []
    images = ([body["image"]] if "image" in body else []) + list(body.get("images") or [])
    for i, b64 in enumerate(images):
        if not isinstance(b64, str):
            raise HTTPException(400, "Images in JSON must be base64 strings.")
        if b64.startswith("data:") and "," in b64:
            b64 = b64.split(",", 1)[1]
        try:
            data = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise HTTPException(400, "An image in the JSON body is not valid base64.") from None
        out.append(Input(name=_safe_name(base, f"image{i}") if len(images) == 1 else f"image{i}", data=data,
                         options=options))
    texts = ([body["text"]] if "text" in body else []) + list(body.get("texts") or [])
    for t in texts:
        if not isinstance(t, str):
            raise HTTPException(400, "Texts in JSON must be strings.")
        out.append(Input(name=_safe_name(base, "text"), text=t, options=options))
    return out


def app_from_env():
    """App factory for ``--workers N`` (each uvicorn worker process loads the models itself)."""
    from transferkit.serve import server_options

    settings = ServeSettings(**json.loads(os.environ["TRANSFERKIT_SERVE_SETTINGS"]))
    server_options(settings)  # this process's header deadline (a class attribute) from the settings
    return create_app(settings)
