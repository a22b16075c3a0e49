"""A secured, monitored model service for the sentiment classifier, its micro-batcher and a load tester.

Taught in the deployment chapter (``notebooks/13_deployment.ipynb``).

:func:`create_app` builds a FastAPI application around any model with a ``predict(texts)`` method
(:class:`TextClassifier` wraps a PyTorch module or an ONNX Runtime session with its tokenizer):

- ``POST /v1/sentiment`` takes ``{"texts": "one text"}`` or ``{"texts": ["a", "b", ...]}`` and answers
  one prediction per text, with the model version;
- ``GET /healthz`` says whether the service is up and which model version it serves;
- ``GET /metrics`` is the Prometheus text format: requests by endpoint and status, a latency
  histogram, batch sizes and the model version;
- ``POST /v1/admin/reload`` reloads the model file (the service also polls the file's modification
  time) and swaps the model without dropping a request: batches already running keep the old model.

Security: bearer tokens read from an environment variable or a file, compared with
:func:`hmac.compare_digest` (constant time); 401 without a token, 403 with a wrong one; pydantic
validation (422, without echoing the input back); 413 for a body over the size limit; personal data
(e-mail addresses, phone and card numbers) masked with :func:`mask_pii` before anything is logged;
errors answer a short JSON message and a request id, never a stack trace.

Performance: :class:`MicroBatcher` collects requests for a few milliseconds and runs them as one
batch (*dynamic batching*, 动态批处理), in a single model thread so the event loop stays free.

:func:`run_load_test` is a closed-loop load generator (async httpx), bounded in requests and time.
Run a server from the command line with ``python -m llmbook.serve --model-dir DIR --port 8000``.
"""

import argparse
import asyncio
import hashlib
import hmac
import json
import logging
import math
import os
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from llmbook.checks import require_bool, require_int
from llmbook.runtime import free_port, write_atomic

__all__ = [
    "TOKENS_ENV_VAR",
    "LoadTestResult",
    "MicroBatcher",
    "ServiceSettings",
    "TextClassifier",
    "create_app",
    "load_model_dir",
    "load_tokens",
    "luhn_valid",
    "mask_pii",
    "run_load_test",
    "save_model_dir",
]

TOKENS_ENV_VAR = "LLMBOOK_API_TOKENS"
"""Comma-separated bearer tokens the service accepts (when no token file is given)."""

logger = logging.getLogger("llmbook.serve")

# ---------------------------------------------------------------------------------------------
# Personal data masking
# ---------------------------------------------------------------------------------------------

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
# 13-19 digits, optionally grouped by single spaces or dashes: a payment card number if Luhn-valid.
_CARD = re.compile(r"(?<![\w.,+])\d(?:[ -]?\d){12,18}(?![\w])")
# Phone numbers: international (+country code), North American (555) 123-4567 / 555-123-4567, and
# Chinese mobile numbers (11 digits starting 13-19). Dates (2024-01-15), amounts (1,234.56), years and
# tickers do not match: a bare run of digits is a phone number only in the Chinese mobile form.
_PHONE = re.compile(
    r"(?<![\w+])(?:"
    r"\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}"  # +44 20 7946 0958, +1 (555) 123-4567
    r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}"  # (555) 123-4567
    r"|\d{3}[.-]\d{3}[.-]\d{4}"  # 555-123-4567
    r"|1[3-9]\d{9}"  # 13812345678
    r")(?![\w])"
)


def luhn_valid(digits: str) -> bool:
    """True if the string of digits passes the Luhn checksum that every payment card number carries."""
    if not digits.isdigit():
        return False
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def mask_pii(text: str) -> str:
    """``text`` with e-mail addresses, payment card numbers and phone numbers replaced by placeholders.

    ``[EMAIL]``, ``[CARD]`` (13-19 digits, spaces or dashes allowed, that pass the Luhn checksum) and
    ``[PHONE]`` (international numbers written with ``+``, North American ``(555) 123-4567`` /
    ``555-123-4567``, Chinese mobile numbers ``138...``). Prices, percentages, dates, years and tickers
    are left alone, so a masked log line still reads like the tweet. Rules like these catch the common
    forms only; the chapter's table shows which cases pass.
    """
    if not isinstance(text, str):
        raise TypeError(f"mask_pii needs a str, got {type(text).__name__}")
    text = _EMAIL.sub("[EMAIL]", text)

    def card(match: re.Match) -> str:
        digits = re.sub(r"\D", "", match.group())
        return "[CARD]" if luhn_valid(digits) else match.group()

    text = _CARD.sub(card, text)
    return _PHONE.sub("[PHONE]", text)


class _MaskingFilter(logging.Filter):
    """Masks personal data in every record of the service's logger, whatever the caller passed."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = mask_pii(record.getMessage())
        record.args = None
        return True


if not any(isinstance(f, _MaskingFilter) for f in logger.filters):
    logger.addFilter(_MaskingFilter())

# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


class Model(Protocol):
    """What the service needs from a model: labels, a version string and ``predict``."""

    labels: Sequence[str]
    version: str

    def predict(self, texts: Sequence[str]) -> np.ndarray:  # (len(texts), len(labels)) probabilities
        ...


class TextClassifier:
    """A tokenizer plus a function from token-id arrays to logits: PyTorch or ONNX Runtime.

    ``predict(texts)`` returns softmax probabilities of shape ``(len(texts), len(labels))``.
    Build one with :meth:`from_torch` or :meth:`from_onnx`; ``version`` names the weights (for
    files: the first 12 hex digits of their SHA-256).
    """

    def __init__(self, tokenizer: Any, forward: Callable[[dict[str, np.ndarray]], np.ndarray],
                 labels: Sequence[str], version: str, max_length: int = 64) -> None:
        self.tokenizer = tokenizer
        self.forward = forward
        self.labels = list(labels)
        self.version = str(version)
        self.max_length = require_int("max_length", max_length, minimum=2)

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_length, padding=True,
                                 return_tensors="np")
        logits = np.asarray(self.forward({"input_ids": encoded["input_ids"].astype(np.int64),
                                          "attention_mask": encoded["attention_mask"].astype(np.int64)}),
                            dtype=np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        return (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)

    @classmethod
    def from_torch(cls, module: Any, tokenizer: Any, labels: Sequence[str], version: str = "torch",
                   max_length: int = 64) -> "TextClassifier":
        """Wrap a PyTorch classifier whose ``forward(input_ids, attention_mask)`` returns logits."""
        import torch

        module.eval()

        def forward(batch: dict[str, np.ndarray]) -> np.ndarray:
            with torch.inference_mode():
                out = module(**{k: torch.from_numpy(v) for k, v in batch.items()})
            return getattr(out, "logits", out).float().numpy()

        return cls(tokenizer, forward, labels, version, max_length)

    @classmethod
    def from_onnx(cls, path: str | os.PathLike, tokenizer: Any, labels: Sequence[str],
                  max_length: int = 64, threads: int | None = None) -> "TextClassifier":
        """Wrap an ONNX file (inputs ``input_ids``, ``attention_mask``) in an ONNX Runtime session."""
        from llmbook.compress import onnx_session

        path = Path(path)
        session = onnx_session(path, threads=threads)

        def forward(batch: dict[str, np.ndarray]) -> np.ndarray:
            return session.run(None, batch)[0]

        return cls(tokenizer, forward, labels, file_version(path), max_length)


def file_version(path: str | os.PathLike) -> str:
    """First 12 hex digits of the SHA-256 of a file: names the exact weights a service runs."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


MODEL_FILE = "model.onnx"
META_FILE = "service.json"


def save_model_dir(folder: str | os.PathLike, onnx_file: str | os.PathLike, tokenizer: Any,
                   labels: Sequence[str], max_length: int = 64) -> Path:
    """Put what a service needs in ``folder``: ``model.onnx``, the tokenizer and ``service.json``.

    The ONNX file is copied atomically (a temporary file in the folder, then ``os.replace``), so a
    running service that watches the folder never reads a half-written model: this is also how to hot
    swap a new model into a running service.
    """
    import shutil

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder / "tokenizer")
    write_atomic(folder / META_FILE, json.dumps({"labels": list(labels), "max_length": max_length}).encode())
    with open(onnx_file, "rb") as source:
        write_atomic(folder / MODEL_FILE, lambda handle: shutil.copyfileobj(source, handle))
    return folder


def load_model_dir(folder: str | os.PathLike, threads: int | None = None) -> TextClassifier:
    """The :class:`TextClassifier` saved by :func:`save_model_dir` (ONNX Runtime)."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not (folder / MODEL_FILE).is_file() or not (folder / META_FILE).is_file():
        raise FileNotFoundError(f"{folder} holds no {MODEL_FILE} and {META_FILE}: create it with save_model_dir")
    meta = json.loads((folder / META_FILE).read_text())
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    return TextClassifier.from_onnx(folder / MODEL_FILE, tokenizer, meta["labels"], meta["max_length"], threads)

# ---------------------------------------------------------------------------------------------
# The micro-batcher
# ---------------------------------------------------------------------------------------------


@dataclass
class _Pending:
    items: list
    future: asyncio.Future


class MicroBatcher:
    """Collects requests for up to ``max_wait_ms`` and runs them as one call of ``fn``.

    ``await batcher.submit(items)`` returns ``fn``'s results for exactly those items, in order. ``fn``
    maps a list of items to a sequence of results of the same length; it runs in one worker thread
    (the model is called once at a time and the event loop stays free). A batch closes when it
    holds ``max_batch_size`` items or ``max_wait_ms`` after its first request arrived; a request is
    never split across batches. ``enabled=False`` runs each request as its own call (the baseline).
    If ``fn`` raises, every request of that batch gets the exception. ``batch_sizes`` records the
    size of every call (the service exports it as a histogram).
    """

    def __init__(self, fn: Callable[[list], Sequence], *, max_batch_size: int = 32, max_wait_ms: float = 5.0,
                 enabled: bool = True, on_batch: Callable[[int], None] | None = None) -> None:
        self.fn = fn
        self.max_batch_size = require_int("max_batch_size", max_batch_size, minimum=1)
        if not isinstance(max_wait_ms, (int, float)) or not 0 <= max_wait_ms < math.inf:
            raise ValueError(f"max_wait_ms must be a finite number >= 0, got {max_wait_ms!r}")
        self.max_wait_s = float(max_wait_ms) / 1000
        self.enabled = require_bool("enabled", enabled)
        self.on_batch = on_batch
        self.batch_sizes: list[int] = []
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")

    async def submit(self, items: Sequence) -> list:
        """The results of ``fn`` for ``items`` (run together with other requests' items)."""
        items = list(items)
        if not items:
            return []
        loop = asyncio.get_running_loop()
        if not self.enabled:
            return await loop.run_in_executor(self._executor, self._call, items)
        if self._task is None or self._task.done():
            self._queue = asyncio.Queue()
            self._task = loop.create_task(self._run())
        future = loop.create_future()
        await self._queue.put(_Pending(items, future))
        return await future

    def _call(self, items: list) -> list:
        results = list(self.fn(items))
        if len(results) != len(items):
            raise RuntimeError(f"the batch function returned {len(results)} results for {len(items)} items")
        self.batch_sizes.append(len(items))
        if self.on_batch is not None:
            self.on_batch(len(items))
        return results

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        carry: _Pending | None = None
        while True:
            first = carry or await queue.get()
            carry = None
            batch, size = [first], len(first.items)
            deadline = loop.time() + self.max_wait_s
            while size < self.max_batch_size:
                remaining = deadline - loop.time()
                try:
                    nxt = queue.get_nowait() if remaining <= 0 else await asyncio.wait_for(queue.get(), remaining)
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
                if size + len(nxt.items) > self.max_batch_size:
                    carry = nxt  # starts the next batch: requests are never split
                    break
                batch.append(nxt)
                size += len(nxt.items)
            items = [item for pending in batch for item in pending.items]
            try:
                results = await loop.run_in_executor(self._executor, self._call, items)
            except Exception as exc:  # every caller of this batch gets the error
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
                continue
            start = 0
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_result(results[start:start + len(pending.items)])
                start += len(pending.items)

    async def aclose(self) -> None:
        """Stop the batching task and the worker thread."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        self._executor.shutdown(wait=False, cancel_futures=True)

# ---------------------------------------------------------------------------------------------
# Settings, tokens
# ---------------------------------------------------------------------------------------------


@dataclass
class ServiceSettings:
    """Limits and switches of the service (every field has a safe default).

    ``tokens``: accepted bearer tokens; when empty they are read with :func:`load_tokens` from
    ``token_file`` or the ``LLMBOOK_API_TOKENS`` environment variable (a service with no token at
    all refuses to start). ``model_dir``: a folder from :func:`save_model_dir` to watch for hot swaps
    (``None``: no reloading); it is polled every ``reload_interval_s`` seconds.
    """

    tokens: Sequence[str] = ()
    token_file: str | os.PathLike | None = None
    max_texts: int = 32
    max_text_chars: int = 1000
    max_body_bytes: int = 64_000
    batching: bool = True
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    model_dir: str | os.PathLike | None = None
    reload_interval_s: float = 2.0
    metrics_require_auth: bool = False
    log_texts: bool = True


def load_tokens(token_file: str | os.PathLike | None = None, env_var: str = TOKENS_ENV_VAR) -> list[str]:
    """Bearer tokens, one per line of ``token_file`` (``#`` comments allowed), else comma-separated in ``env_var``.

    Tokens never live in code or notebooks: a file readable by the service only, or an environment
    variable set by the process manager. Raises ``ValueError`` when neither provides a token.
    """
    if token_file is not None:
        lines = Path(token_file).read_text().splitlines()
        tokens = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
        source = f"the token file {Path(token_file).name}"
    else:
        tokens = [t.strip() for t in os.environ.get(env_var, "").split(",") if t.strip()]
        source = f"the environment variable {env_var}"
    if not tokens:
        raise ValueError(f"no API token found in {source}: set {env_var}=token1,token2 or pass token_file")
    short = [t for t in tokens if len(t) < 16]
    if short:
        raise ValueError(f"{len(short)} API token(s) are shorter than 16 characters: use e.g. secrets.token_urlsafe(32)")
    return tokens


def _token_matches(candidate: str, tokens: Sequence[bytes]) -> bool:
    """Constant-time comparison against every token (no early exit that would leak which one matched)."""
    given = candidate.encode()
    found = False
    for token in tokens:
        found |= hmac.compare_digest(given, token)
    return found

# ---------------------------------------------------------------------------------------------
# The application
# ---------------------------------------------------------------------------------------------


BODY_TOO_LARGE = "llmbook.body_too_large"


class _BodySizeLimit:
    """ASGI middleware: 413 when a request body is larger than ``limit`` bytes (declared or streamed)."""

    def __init__(self, app: Any, limit: int, version: Callable[[], str] | None = None) -> None:
        self.app, self.limit, self.version = app, limit, version

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._reject(send)
        seen = 0
        started = False

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    # Stop reading: to the app this looks like a client that went away; the flag tells
                    # the endpoint to answer 413 (raising here would surface as a 500 through middleware).
                    scope[BODY_TOO_LARGE] = True
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started |= message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, limited_receive, tracking_send)
        if scope.get(BODY_TOO_LARGE) and not started:
            await self._reject(send)

    async def _reject(self, send: Callable) -> None:
        version = self.version() if self.version is not None else ""
        body = json.dumps({"error": f"request body larger than {self.limit} bytes", "model_version": version}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"x-model-version", version.encode())]})
        await send({"type": "http.response.body", "body": body})


class _ModelHolder:
    """The current model, swapped atomically; reloads ``model_dir`` when its model file changes."""

    def __init__(self, model: Model, model_dir: str | os.PathLike | None) -> None:
        self.model = model
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.stamp = self._stamp()
        self.lock = threading.Lock()
        self.swaps = 0

    def _stamp(self) -> tuple | None:
        if self.model_dir is None:
            return None
        try:
            info = (self.model_dir / MODEL_FILE).stat()
        except FileNotFoundError:
            return None
        return (info.st_mtime_ns, info.st_size, info.st_ino)

    def reload(self, force: bool = False) -> bool:
        """Load the model file again if it changed (or ``force``); True if the model was swapped."""
        if self.model_dir is None:
            return False
        with self.lock:
            stamp = self._stamp()
            if stamp is None or (stamp == self.stamp and not force):
                return False
            new = load_model_dir(self.model_dir, threads=getattr(self, "threads", None))
            self.model, self.stamp = new, stamp  # one reference assignment: in-flight batches keep the old model
            self.swaps += 1
            return True


def create_app(model: Model, settings: ServiceSettings | None = None) -> Any:
    """The FastAPI application serving ``model`` (see the module docstring for the endpoints).

    ``model`` needs ``labels``, ``version`` and ``predict(texts) -> probabilities``. The app's
    ``state`` holds ``holder`` (the current model), ``batcher`` and ``registry`` (the Prometheus
    registry of this app only, so several apps can live in one process).
    """
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse
    from starlette.requests import ClientDisconnect
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
    from pydantic import BaseModel, ConfigDict, StrictStr, ValidationError, field_validator

    settings = settings or ServiceSettings()
    for name in ("max_texts", "max_text_chars", "max_body_bytes", "max_batch_size"):
        require_int(name, getattr(settings, name), minimum=1)
    for name in ("batching", "metrics_require_auth", "log_texts"):
        require_bool(name, getattr(settings, name))
    for name in ("labels", "version", "predict"):
        if not hasattr(model, name):
            raise TypeError(f"model must have labels, version and predict(texts); {type(model).__name__} has no {name}")
    tokens = [t.encode() for t in (settings.tokens or load_tokens(settings.token_file))]
    max_texts, max_chars = settings.max_texts, settings.max_text_chars

    registry = CollectorRegistry()
    requests_total = Counter("llmbook_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                             registry=registry)
    latency = Histogram("llmbook_request_latency_seconds", "Request latency by endpoint", ["endpoint"],
                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=registry)
    batch_hist = Histogram("llmbook_batch_size", "Texts per model call", buckets=(1, 2, 4, 8, 16, 32, 64, 128),
                           registry=registry)
    texts_total = Counter("llmbook_texts", "Texts classified", registry=registry)
    model_info = Gauge("llmbook_model_info", "1 for the model version being served", ["version"], registry=registry)
    holder = _ModelHolder(model, settings.model_dir)
    model_info.labels(version=holder.model.version).set(1)

    def run_batch(texts: list[str]) -> list[tuple[str, np.ndarray]]:
        current = holder.model  # one read: the whole batch uses one model, even during a swap
        probs = current.predict(texts)
        return [(current.version, row) for row in probs]

    batcher = MicroBatcher(run_batch, max_batch_size=settings.max_batch_size, max_wait_ms=settings.max_wait_ms,
                           enabled=settings.batching, on_batch=batch_hist.observe)

    class SentimentRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        texts: StrictStr | list[StrictStr]

        @field_validator("texts")
        @classmethod
        def check_texts(cls, value: str | list[str]) -> list[str]:
            texts = [value] if isinstance(value, str) else value
            if not texts:
                raise ValueError("texts is an empty list: send at least one text")
            if len(texts) > max_texts:
                raise ValueError(f"{len(texts)} texts in one request; the limit is {max_texts}")
            for i, text in enumerate(texts):
                if not text.strip():
                    raise ValueError(f"text {i} is empty")
                if len(text) > max_chars:
                    raise ValueError(f"text {i} has {len(text)} characters; the limit is {max_chars}")
            return texts

    # The annotations are strings (``from __future__ import annotations``): resolve them here.
    SentimentRequest.model_rebuild(_types_namespace={"StrictStr": StrictStr})

    async def watch_model_file() -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(settings.reload_interval_s)
            try:
                if await loop.run_in_executor(None, holder.reload):
                    model_info.clear()
                    model_info.labels(version=holder.model.version).set(1)
                    logger.info("model swapped to version %s", holder.model.version)
            except Exception as exc:  # a broken new file must not stop the service: keep the old model
                logger.error("model reload failed (%s); still serving %s", type(exc).__name__, holder.model.version)

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: Any):
        watcher = asyncio.create_task(watch_model_file()) if settings.model_dir is not None else None
        yield
        if watcher is not None:
            watcher.cancel()
        await batcher.aclose()

    app = FastAPI(title="llmbook sentiment service", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.holder, app.state.batcher, app.state.registry, app.state.settings = holder, batcher, registry, settings

    def error(status: int, message: str, request: Request, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message, "request_id": request.state.request_id,
                             "model_version": holder.model.version}, status_code=status, headers=headers)

    def check_auth(request: Request) -> JSONResponse | None:
        header = request.headers.get("authorization", "")
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            return error(401, "missing bearer token: send 'Authorization: Bearer <token>'", request,
                         {"WWW-Authenticate": "Bearer"})
        if not _token_matches(credentials.strip(), tokens):
            return error(403, "invalid token", request)
        return None

    @app.middleware("http")
    async def observe(request: Request, call_next: Callable) -> Any:
        request.state.request_id = uuid.uuid4().hex[:12]
        started = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception as exc:  # never a stack trace in a response; the log gets the type only
            logger.error("request %s failed: %s", request.state.request_id, type(exc).__name__)
            response = error(500, "internal error", request)
        endpoint = request.url.path if request.url.path in {"/v1/sentiment", "/healthz", "/metrics",
                                                            "/v1/admin/reload"} else "other"
        requests_total.labels(endpoint=endpoint, status=str(response.status_code)).inc()
        latency.labels(endpoint=endpoint).observe(time.perf_counter() - started)
        response.headers["X-Request-ID"] = request.state.request_id
        response.headers["X-Model-Version"] = holder.model.version
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default answer echoes the input back: with personal data in it. Ours names the problem only.
        details = [{"loc": [str(part) for part in e.get("loc", ())], "msg": str(e.get("msg", ""))}
                   for e in exc.errors()]
        response = error(422, "invalid request", request)
        body = json.loads(response.body)
        body["details"] = details
        return JSONResponse(body, status_code=422)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        logger.error("request %s failed: %s", request.state.request_id, type(exc).__name__)
        return error(500, "internal error", request)

    @app.exception_handler(404)
    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        return error(404, "not found", request)

    @app.exception_handler(405)
    async def wrong_method(request: Request, exc: Exception) -> JSONResponse:
        return error(405, "method not allowed", request)

    @app.get("/healthz")
    async def healthz(request: Request) -> dict:
        return {"status": "ok", "model_version": holder.model.version}

    @app.get("/metrics")
    async def metrics(request: Request) -> Any:
        if settings.metrics_require_auth and (denied := check_auth(request)) is not None:
            return denied
        return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/sentiment")
    async def sentiment(request: Request) -> Any:
        if (denied := check_auth(request)) is not None:
            return denied  # before reading the body: an anonymous client gets nothing parsed
        try:
            payload = await request.json()
        except ClientDisconnect:
            if request.scope.get(BODY_TOO_LARGE):  # a streamed body without Content-Length grew past the limit
                return error(413, f"request body larger than {settings.max_body_bytes} bytes", request)
            raise
        except (ValueError, UnicodeDecodeError):
            return error(422, "the body is not valid JSON", request)
        try:
            body = SentimentRequest.model_validate(payload)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None
        texts: list[str] = body.texts  # type: ignore[assignment]
        if settings.log_texts:
            logger.info("request %s: %d text(s), first: %s", request.state.request_id, len(texts), texts[0][:200])
        outputs = await batcher.submit(texts)
        labels = holder.model.labels
        results = []
        for version, probs in outputs:
            best = int(np.argmax(probs))
            results.append({"label": labels[best], "score": round(float(probs[best]), 6),
                            "probabilities": {name: round(float(p), 6) for name, p in zip(labels, probs)}})
        texts_total.inc(len(texts))
        return {"model_version": outputs[0][0], "request_id": request.state.request_id, "results": results}

    @app.post("/v1/admin/reload")
    async def reload(request: Request) -> Any:
        if (denied := check_auth(request)) is not None:
            return denied
        if holder.model_dir is None:
            return error(409, "this service was started without a model folder to reload", request)
        try:
            swapped = await asyncio.get_running_loop().run_in_executor(None, lambda: holder.reload(force=True))
        except Exception as exc:
            logger.error("model reload failed (%s)", type(exc).__name__)
            return error(500, "reload failed; the previous model is still served", request)
        if swapped:
            model_info.clear()
            model_info.labels(version=holder.model.version).set(1)
        return {"reloaded": swapped, "model_version": holder.model.version}

    # Outermost, so an oversized body is refused before anything parses it.
    app.add_middleware(_BodySizeLimit, limit=settings.max_body_bytes, version=lambda: holder.model.version)
    return app

# ---------------------------------------------------------------------------------------------
# Load testing
# ---------------------------------------------------------------------------------------------


@dataclass
class LoadTestResult:
    """Per-request records of a load test and their summary.

    ``records`` rows: ``start`` (seconds since the test began), ``latency_s``, ``status`` (HTTP status,
    or 0 for a connection error/timeout), ``error`` (exception type or ""), ``version``.
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    concurrency: int = 0

    @property
    def failed(self) -> int:
        return sum(1 for r in self.records if r["status"] != 200)

    def summary(self) -> dict[str, float]:
        ok = np.array([r["latency_s"] for r in self.records if r["status"] == 200])
        return {
            "concurrency": self.concurrency,
            "requests": len(self.records),
            "failed": self.failed,
            "p50_ms": float(np.percentile(ok, 50) * 1000) if ok.size else math.nan,
            "p99_ms": float(np.percentile(ok, 99) * 1000) if ok.size else math.nan,
            "throughput_rps": ok.size / self.seconds if self.seconds > 0 else math.nan,
        }


async def run_load_test(url: str, texts: Sequence[str], *, token: str, concurrency: int = 4,
                        duration_s: float = 10.0, max_requests: int = 10_000, texts_per_request: int = 1,
                        timeout_s: float = 10.0, on_tick: Callable[[float], Any] | None = None) -> LoadTestResult:
    """A closed-loop load test: ``concurrency`` clients each send requests back to back to ``url``.

    Stops after ``duration_s`` seconds or ``max_requests`` requests, whichever comes first (it always
    stops by itself). Each request sends ``texts_per_request`` texts taken in turn from ``texts``. A
    connection error or timeout is recorded as status 0 with its exception type, and the client goes on.
    ``on_tick(elapsed_s)`` (optional, may be a coroutine function) is called about once a second, e.g.
    to scrape ``/metrics``.
    """
    import httpx

    concurrency = require_int("concurrency", concurrency, minimum=1)
    max_requests = require_int("max_requests", max_requests, minimum=1)
    texts_per_request = require_int("texts_per_request", texts_per_request, minimum=1)
    if not texts:
        raise ValueError("texts is empty: the load test needs texts to send")
    result = LoadTestResult(concurrency=concurrency)
    counter = {"sent": 0}
    started = time.perf_counter()
    deadline = started + float(duration_s)
    headers = {"Authorization": f"Bearer {token}"}

    async def client(worker: int, http: Any) -> None:
        while time.perf_counter() < deadline and counter["sent"] < max_requests:
            index = counter["sent"]
            counter["sent"] += 1
            batch = [texts[(index * texts_per_request + j) % len(texts)] for j in range(texts_per_request)]
            t0 = time.perf_counter()
            try:
                response = await http.post(url, json={"texts": batch}, headers=headers)
                status, err = response.status_code, ""
                version = response.headers.get("x-model-version", "")
            except (httpx.HTTPError, OSError) as exc:
                status, err, version = 0, type(exc).__name__, ""
                await asyncio.sleep(0.05)  # a refused connection returns at once: do not spin
            result.records.append({"start": t0 - started, "latency_s": time.perf_counter() - t0,
                                   "status": status, "error": err, "version": version, "worker": worker})

    async def ticker() -> None:
        while time.perf_counter() < deadline and counter["sent"] < max_requests:
            await asyncio.sleep(1.0)
            value = on_tick(time.perf_counter() - started)
            if asyncio.iscoroutine(value):
                await value

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as http:
        jobs = [client(i, http) for i in range(concurrency)]
        if on_tick is not None:
            tick_task = asyncio.ensure_future(ticker())
        await asyncio.gather(*jobs)
        if on_tick is not None:
            tick_task.cancel()
    result.seconds = time.perf_counter() - started
    return result

# ---------------------------------------------------------------------------------------------
# Command line: python -m llmbook.serve --model-dir DIR --port PORT
# ---------------------------------------------------------------------------------------------


def app_from_environment() -> Any:
    """The app for ``uvicorn --factory llmbook.serve:app_from_environment`` (settings from ``LLMBOOK_SERVE_*``)."""
    folder = os.environ["LLMBOOK_SERVE_MODEL_DIR"]
    threads = int(os.environ.get("LLMBOOK_SERVE_THREADS", "1"))
    settings = ServiceSettings(
        token_file=os.environ.get("LLMBOOK_SERVE_TOKEN_FILE") or None,
        batching=os.environ.get("LLMBOOK_SERVE_BATCHING", "1") == "1",
        max_wait_ms=float(os.environ.get("LLMBOOK_SERVE_MAX_WAIT_MS", "5")),
        model_dir=folder,
        log_texts=os.environ.get("LLMBOOK_SERVE_LOG_TEXTS", "1") == "1",
    )
    model = load_model_dir(folder, threads=threads)
    app = create_app(model, settings)
    app.state.holder.threads = threads
    return app


def main(argv: list[str] | None = None) -> int:
    """Serve a model folder with uvicorn on 127.0.0.1 (tokens from ``--token-file`` or ``LLMBOOK_API_TOKENS``)."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m llmbook.serve", description=main.__doc__)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per worker")
    parser.add_argument("--token-file", default=None)
    parser.add_argument("--no-batching", action="store_true")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    args = parser.parse_args(argv)
    os.environ["LLMBOOK_SERVE_MODEL_DIR"] = str(Path(args.model_dir).resolve())
    os.environ["LLMBOOK_SERVE_THREADS"] = str(args.threads)
    os.environ["LLMBOOK_SERVE_BATCHING"] = "0" if args.no_batching else "1"
    os.environ["LLMBOOK_SERVE_MAX_WAIT_MS"] = str(args.max_wait_ms)
    if args.token_file:
        os.environ["LLMBOOK_SERVE_TOKEN_FILE"] = str(Path(args.token_file).resolve())
    uvicorn.run("llmbook.serve:app_from_environment", factory=True, host=args.host, port=args.port,
                workers=args.workers, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

# ---------------------------------------------------------------------------------------------
# Running the service in a subprocess (notebooks, tests)
# ---------------------------------------------------------------------------------------------


class ServerProcess:
    """``python -m llmbook.serve`` in a subprocess on 127.0.0.1: started, waited for, and always stopped.

    Use as a context manager (``with ServerProcess(folder, token_file) as server: server.url``);
    leaving the block stops the server (SIGTERM, then SIGKILL after ``stop_timeout_s``), also on
    errors. ``worker_pids()`` lists the uvicorn worker processes (with ``workers > 1`` the supervisor
    restarts a worker that dies). Output goes to ``log_file`` (default: discarded).
    """

    def __init__(self, model_dir: str | os.PathLike, token_file: str | os.PathLike, *, port: int | None = None,
                 workers: int = 1, threads: int = 1, batching: bool = True, max_wait_ms: float = 5.0,
                 start_timeout_s: float = 120.0, stop_timeout_s: float = 20.0,
                 log_file: str | os.PathLike | None = None) -> None:
        self.model_dir, self.token_file = Path(model_dir), Path(token_file)
        self.port = port or free_port()
        self.workers = require_int("workers", workers, minimum=1)
        self.threads = require_int("threads", threads, minimum=1)
        self.batching = require_bool("batching", batching)
        self.max_wait_ms = max_wait_ms
        self.start_timeout_s, self.stop_timeout_s = start_timeout_s, stop_timeout_s
        self.log_file = log_file
        self.process: Any = None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> "ServerProcess":
        import subprocess
        import sys

        import httpx

        command = [sys.executable, "-m", "llmbook.serve", "--model-dir", str(self.model_dir), "--port",
                   str(self.port), "--workers", str(self.workers), "--threads", str(self.threads),
                   "--token-file", str(self.token_file), "--max-wait-ms", str(self.max_wait_ms)]
        if not self.batching:
            command.append("--no-batching")
        output = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads)}
        self.process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + self.start_timeout_s
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited at start-up with code {self.process.returncode}"
                                   + (f"; see {Path(self.log_file).name}" if self.log_file else ""))
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200 and \
                        len(self.worker_pids()) >= (self.workers if self.workers > 1 else 0):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"the server did not answer within {self.start_timeout_s:.0f} s")

    def worker_pids(self) -> list[int]:
        """Process ids of the worker processes (empty with a single worker: it is the main process)."""
        import psutil

        if self.process is None or self.workers == 1:
            return []
        try:
            children = psutil.Process(self.process.pid).children()
        except psutil.NoSuchProcess:
            return []
        pids = []
        for child in children:  # multiprocessing's resource tracker is a child too: not a worker
            try:
                command = " ".join(child.cmdline())
            except psutil.Error:
                continue
            if "resource_tracker" not in command:
                pids.append(child.pid)
        return pids

    def stop(self) -> None:
        import signal
        import subprocess

        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(self.stop_timeout_s)

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ += ["ServerProcess", "free_port"]
