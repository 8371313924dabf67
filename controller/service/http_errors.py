"""Every error the API answers is JSON with a sentence: never a traceback, never a 500 for
bad input. Bodies are bounded before they are read."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

# The largest request body accepted: a session request is ~200 bytes, a plan run ~1 KiB.
MAX_BODY_BYTES = 64 * 1024

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class ApiError(Exception):
    """An answer with a status and a sentence (and, for 422, every problem)."""

    def __init__(self, status: int, message: str, problems: list[str] | None = None,
                 **extra: object) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.problems = problems or []
        self.extra = extra


def error_body(message: str, problems: list[str] | None = None,
               **extra: object) -> dict[str, object]:
    return {"error": message, "problems": problems or [message], **extra}


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "the request body"


def validation_sentences(errors: list[Any]) -> list[str]:
    """Pydantic's errors as sentences that name the field."""
    out = []
    for err in errors:
        kind = err.get("type", "")
        where = _field(err.get("loc", ()))
        if kind == "extra_forbidden":
            out.append(f"unknown field '{where}'")
        elif kind == "missing":
            out.append(f"'{where}' is required")
        elif kind == "json_invalid":
            out.append("the body is not valid JSON: " + str(err.get("ctx", {}).get("error", "")))
        else:
            out.append(f"'{where}': {err.get('msg', 'invalid')}")
    return out


def install(app: FastAPI) -> None:
    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return JSONResponse(error_body(exc.message, exc.problems, **exc.extra), exc.status)

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        problems = validation_sentences(list(exc.errors()))
        return JSONResponse(error_body("; ".join(problems) or "invalid request", problems), 422)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        text = exc.detail if isinstance(exc.detail, str) else "request refused"
        if exc.status_code == 404 and text == "Not Found":
            text = f"no such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            text = f"{request.method} is not allowed on {request.url.path}"
        return JSONResponse(error_body(text), exc.status_code, headers=exc.headers)

    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse(error_body("the service failed to answer this request; it is "
                                       "logged (no session was changed by the failure)"), 500)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, internal)


class BodyLimit:
    """ASGI middleware: a body over MAX_BODY_BYTES gets 413 before the route reads it
    (by its Content-Length, or as its chunks arrive when it has none)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]],
                 limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await _too_large(send, self.limit)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    # Raised where the route reads its body: FastAPI passes an
                    # HTTPException through to the JSON error handler.
                    raise StarletteHTTPException(
                        413, f"the request body is larger than {self.limit} bytes")
            return message

        await self.app(scope, limited_receive, send)


async def _too_large(send: Send, limit: int) -> None:
    body = json.dumps(error_body(f"the request body is larger than {limit} bytes")).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
