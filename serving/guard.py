"""The service's front door: an ASGI middleware between BentoML's server and the service's routes.

BentoML 1.4.40 has no request limits of its own, and answers several client mistakes in shapes of its own:

- a request body is read into memory whatever its size, and a client that stops sending halfway holds the
  request until the traffic timeout (504);
- its errors come in several shapes: ``[{"error": ...}]`` for a 4xx ``BentoMLException`` (a stray tuple in
  ``api_endpoint_wrapper``), ``{"error": "1 validation error for Input", "detail": [...]}`` for pydantic,
  plain text for 404 and 405.

So this door guards every path. A documented route has its own ``RouteRule`` (``serving.api.route_rules``, from
the routes' signatures); every other path (BentoML's own pages, an unknown path that will be a 404) gets
``DEFAULT_RULE``: a small body of the content types a JSON or form endpoint takes, any method (the application
answers 404 or 405). Per rule, the door answers undocumented methods with 405 and an ``Allow`` header; checks the
content type (415) and the declared size (413) before reading; streams the body into a spool (a temporary file past
1 MiB, so memory stays bounded whatever the size), answering 408 when the client stalls (no byte for
``body_idle_timeout`` s, or the whole body not in within ``body_timeout`` s) and 413 when it is larger than the rule
allows; then replays the body to the application, which parses it once (``serving.api.read_once``). Every error
answer that leaves the service, BentoML's included, is rewritten into the one shape ``{"error": "...", "detail":
...}`` (``detail`` only when there is one). ``/docs.json`` answers the service's OpenAPI document
(``serving.openapi``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import typing as t
from dataclasses import dataclass, field
from http import HTTPStatus

import anyio
import anyio.to_thread
from starlette.datastructures import Headers
from starlette.responses import JSONResponse

from serving.inputs import error_body, error_response

if t.TYPE_CHECKING:
    from serving.model_metrics import RefusalCounter

logger = logging.getLogger("bentoml.digit_compare")

Scope = t.MutableMapping[str, t.Any]
Message = t.MutableMapping[str, t.Any]
Receive = t.Callable[[], t.Awaitable[Message]]
Send = t.Callable[[Message], t.Awaitable[None]]

#: A body is kept in memory up to this size, beyond it in a temporary file, written in pieces of this size.
SPOOL_IN_MEMORY = 1024 * 1024
#: Chunk size when the spooled body is replayed to the application.
REPLAY_CHUNK = 256 * 1024


class BodySpool:
    """A request body, in memory up to SPOOL_IN_MEMORY and beyond it in a temporary file.

    The file is written and read in a worker thread: eight clients uploading 60 MiB each make the
    kernel throttle the writer, and a throttled write on the event loop stalls every request (a
    /readyz took 0.9 s).
    """

    def __init__(self) -> None:
        self.size = 0
        self._pending = bytearray()
        self._file: t.BinaryIO | None = None

    async def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self._pending += chunk
        if len(self._pending) > SPOOL_IN_MEMORY:
            await self._flush()

    async def _flush(self) -> None:
        if self._file is None:
            self._file = await anyio.to_thread.run_sync(tempfile.TemporaryFile)
        data, self._pending = bytes(self._pending), bytearray()
        await anyio.to_thread.run_sync(self._file.write, data)

    async def finish(self) -> None:
        """All written: the tail goes to the file too (when there is one), and reading starts at 0."""
        if self._file is not None:
            if self._pending:
                await self._flush()
            await anyio.to_thread.run_sync(self._file.flush)

    async def chunks(self) -> t.AsyncIterator[bytes]:
        if self._file is None:
            for start in range(0, len(self._pending), REPLAY_CHUNK):
                yield bytes(self._pending[start:start + REPLAY_CHUNK])
            return
        await anyio.to_thread.run_sync(self._file.seek, 0)
        while chunk := await anyio.to_thread.run_sync(self._file.read, REPLAY_CHUNK):
            yield chunk

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._pending = bytearray()


@dataclass(frozen=True)
class RouteRule:
    """What one path accepts."""

    methods: tuple[str, ...]  # documented methods; HEAD comes with GET; anything else is a 405; () = any
    limits: dict[str, int] = field(default_factory=dict)  # content type ("" = none) -> body limit; others: 415
    too_large_hint: str = ""  # said after a 413 for a body that is not multipart


#: Methods whose body the door reads and checks; GET, HEAD and OPTIONS requests pass without (the routes
#: never read a body on them).
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: The rule of every path without its own entry: any method (the application answers 404 or 405), at most
#: 64 KiB of a body a JSON or form endpoint would take, or none.
DEFAULT_RULE = RouteRule(methods=(), limits=dict.fromkeys(
    ("application/json", "application/x-www-form-urlencoded", "multipart/form-data", ""), 64 * 1024))


class RequestRefused(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers


# --------------------------------------------------------------------------- the one error shape


def normalize_error(status: int, content_type: str, raw: bytes, method: str, path: str) -> dict[str, t.Any]:
    """Any error answer (BentoML's, Starlette's, ours) -> ``{"error": str, "detail": ...}``."""
    value: t.Any = None
    if "json" in content_type:
        try:
            value = json.loads(raw)
        except ValueError:
            value = None
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        value = value[0]  # BentoML's 4xx BentoMLException answer: a one-element list (a stray tuple upstream)
    if isinstance(value, dict) and isinstance(value.get("error"), str):
        message, detail = value["error"], value.get("detail")
        if isinstance(detail, list) and detail and all(isinstance(d, dict) and "msg" in d for d in detail):
            # pydantic: "1 validation error for Input" says nothing; name each field and its problem
            message = "; ".join(f"{'.'.join(map(str, d.get('loc') or ())) or 'body'}: {d['msg']}" for d in detail)
        return error_body(message, detail)
    if isinstance(value, dict) and isinstance(value.get("detail"), str):
        return error_body(value["detail"])
    text = raw.decode("utf-8", "replace").strip()
    if status == HTTPStatus.NOT_FOUND:
        return error_body(f"no route {method} {path}; the API is described at /docs.json")
    return error_body(text or HTTPStatus(status).phrase)


class _ErrorShapeSend:
    """Wraps ``send``: holds an error answer (status >= 400) until its body is complete, then sends it
    rewritten into the one error shape. Other answers pass straight through."""

    def __init__(self, send: Send, method: str, path: str) -> None:
        self.send, self.method, self.path = send, method, path
        self.start: Message | None = None
        self.chunks: list[bytes] = []

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] >= 400:
            self.start, self.chunks = message, []
            return
        if message["type"] != "http.response.body" or self.start is None:
            await self.send(message)
            return
        self.chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        start, self.start = self.start, None
        headers = Headers(raw=start["headers"])
        shaped = normalize_error(start["status"], headers.get("content-type", ""), b"".join(self.chunks),
                                 self.method, self.path)
        body = json.dumps(shaped, ensure_ascii=False).encode()
        raw = [(k, v) for k, v in start["headers"] if k.lower() not in (b"content-length", b"content-type")]
        raw += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await self.send({**start, "headers": raw})
        await self.send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------- the door


class FrontDoor:
    """ASGI middleware; see the module docstring. ``rules``: path -> its own RouteRule; every other path
    gets ``default_rule``. ``openapi`` builds the ``/docs.json`` answer."""

    def __init__(self, app: t.Any, rules: dict[str, RouteRule], openapi: t.Callable[[], dict],
                 body_idle_timeout: float, body_timeout: float, default_rule: RouteRule = DEFAULT_RULE,
                 refusals: RefusalCounter | None = None) -> None:
        self.app = app
        self.refusals = refusals  # counts the answering routes' refused requests (serving.model_metrics)
        self.rules = rules
        self.default_rule = default_rule
        self.openapi = openapi
        self.body_idle_timeout = body_idle_timeout
        self.body_timeout = body_timeout
        self._spec: dict | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        watch = self.refusals.watch(scope["path"]) if self.refusals is not None else None
        if watch is None:
            await self._answer(scope, receive, send)
            return
        try:
            await self._answer(scope, receive, watch.send(send))
        finally:
            watch.finish()  # a 4xx answer counted as refused, once, with its reason

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        if method != "HEAD":  # a HEAD answer has no body to rewrite
            send = _ErrorShapeSend(send, method, path)
        rule = self.rules.get(path, self.default_rule)
        refused = _method_refused(rule, method, path)
        if refused is not None:
            await self._refuse(scope, send, refused)
        elif path == "/docs.json" and method in ("GET", "HEAD"):
            if self._spec is None:
                self._spec = self.openapi()
            await JSONResponse(self._spec)(scope, receive, send)
        elif method in BODY_METHODS and rule.limits:
            await self._pass_checked_body(scope, receive, send, rule)
        else:
            await self.app(scope, receive, send)

    async def _pass_checked_body(self, scope: Scope, receive: Receive, send: Send, rule: RouteRule) -> None:
        """Read the body into a spool, checking it against ``rule``, then hand it to the application (or
        answer the refusal)."""
        spool = BodySpool()
        try:
            try:
                if not await self._read_body(scope, receive, rule, spool):
                    return  # the client went away: nobody to answer
            except RequestRefused as refused:
                await self._refuse(scope, send, refused)
                return
            await self.app(scope, self._replay(spool, receive), send)
        finally:
            spool.close()

    # ----------------------------------------------------------------- body

    async def _read_body(self, scope: Scope, receive: Receive, rule: RouteRule, spool: BodySpool) -> bool:
        """Check the content type and size, then stream the body into ``spool``; False when the client
        disconnected. Raises RequestRefused (415, 413, 408)."""
        headers = Headers(scope=scope)
        media_type = _media_type(headers)
        path = scope["path"]
        if media_type not in rule.limits:
            accepted = " or ".join(m for m in rule.limits if m) or "no body"
            raise RequestRefused(415, f"{path}: content type {media_type or '(none)'!r} is not accepted; "
                                      f"send {accepted}")
        limit = rule.limits[media_type]
        hint = f"; {rule.too_large_hint}" if rule.too_large_hint and media_type != "multipart/form-data" else ""
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            # Read (and drop) a moderately sized body first: a client still sending would otherwise see a
            # reset connection instead of this answer. Beyond twice the limit it is cut off.
            await self._drain(receive, min(int(declared), 2 * limit))
            raise RequestRefused(413, _too_large(int(declared), limit) + hint, {"Connection": "close"})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        size = 0
        while True:
            wait = min(self.body_idle_timeout, deadline - loop.time())
            try:
                message = await asyncio.wait_for(receive(), timeout=max(wait, 0.0))
            except TimeoutError:
                stalled = wait < self.body_idle_timeout
                raise RequestRefused(408, (
                    f"request body not complete within {self.body_timeout:g} s" if stalled else
                    f"request body stalled: no data for {self.body_idle_timeout:g} s "
                    f"({size} bytes received)"), {"Connection": "close"}) from None
            if message["type"] == "http.disconnect":
                return False
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise RequestRefused(413, _too_large(size, limit) + hint, {"Connection": "close"})
            await spool.write(chunk)
            if not message.get("more_body", False):
                await spool.finish()
                return True

    async def _drain(self, receive: Receive, limit: int) -> None:
        received, more = 0, limit > 0
        while more and received <= limit:
            try:
                message = await asyncio.wait_for(receive(), timeout=self.body_idle_timeout)
            except TimeoutError:
                return
            if message["type"] == "http.disconnect":
                return
            received += len(message.get("body", b""))
            more = message.get("more_body", False)

    @staticmethod
    def _replay(spool: BodySpool, receive: Receive) -> Receive:
        chunks = spool.chunks()
        sent = 0
        done = False

        async def replay() -> Message:
            nonlocal sent, done
            if done:
                return await receive()  # after the body: wait for the disconnect, as a real receive would
            chunk = await anext(chunks, b"")
            sent += len(chunk)
            done = sent >= spool.size or not chunk
            return {"type": "http.request", "body": chunk, "more_body": not done}

        return replay

    @staticmethod
    async def _refuse(scope: Scope, send: Send, refused: RequestRefused) -> None:
        logger.info("refused %s %s: %s (%d)", scope["method"], scope["path"], refused, refused.status)
        response = error_response(str(refused), refused.status, headers=refused.headers)

        async def no_body() -> Message:  # the answer needs nothing more from the request
            return {"type": "http.disconnect"}

        await response(scope, no_body, send)


def _method_refused(rule: RouteRule, method: str, path: str) -> RequestRefused | None:
    """The 405 for a method ``rule`` does not document (HEAD comes with GET; a rule without methods takes any)."""
    if not rule.methods:
        return None
    allowed = (*rule.methods, "HEAD") if "GET" in rule.methods else rule.methods
    if method in allowed:
        return None
    return RequestRefused(405, f"{path} answers {' and '.join(rule.methods)}, not {method}",
                          headers={"Allow": ", ".join(rule.methods)})


def _media_type(headers: Headers) -> str:
    return headers.get("content-type", "").split(";")[0].strip().lower()


def _too_large(size: int, limit: int) -> str:
    return f"request body of {size} bytes is more than the limit of {limit} bytes"
