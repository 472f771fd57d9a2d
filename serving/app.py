"""The HTTP face of a ranking policy: ``POST /rank`` and ``GET /health``.

Routes validate and delegate; the policy (any :class:`ranking.slate.RankingPolicy`) does the
work. A request and its answer follow :mod:`ranking.api`::

    POST /rank {"context": {"user_id": "u7", "query": "navy coat"},
                "candidates": ["i3", "i9", "i4"], "k": 2}
    200 {"items": ["i9", "i3"], "propensities": [1.0, 1.0], "scores": [2.0, 1.0],
         "policy": "oracle"}

What goes wrong, and the answer (always a JSON body with ``detail``):

- a body over ``max_body_bytes`` (by its Content-Length, or counted as it streams in): 413,
  before any of it is parsed;
- a body that is not a valid request (not JSON, a missing or out-of-range field, a
  candidate given twice): 422 in FastAPI's shape, ``{"detail": [{"type", "loc", "msg",
  "input"}]}``, where an echoed value longer than :data:`QUOTE_CHARS` characters is cut and
  marked with its full size, and at most :data:`MAX_ERRORS` errors are listed;
- a request the policy cannot answer (it raises :class:`ranking.slate.SlateError`, e.g. for
  an unknown user id): 422 with ``detail`` saying why;
- a policy that fails (any other exception) or answers with a slate that breaks the contract
  (an item that was not a candidate, a propensity outside (0, 1]): 500 with ``detail``
  naming the policy and the problem; the traceback goes to the server's log, never to the
  client, and a broken slate is never sent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ranking.api import RankRequest, RankResponse
from ranking.slate import RankingPolicy, SlateError
from serving.settings import load

#: Characters of a rejected value quoted back in an error answer.
QUOTE_CHARS = 200
#: Validation errors listed in one 422 answer; the rest are counted, not listed.
MAX_ERRORS = 20

_log = logging.getLogger(__name__)


class _PolicyFailed(Exception):
    """The policy raised something other than a SlateError: a bug on the server's side."""


class _BrokenSlate(Exception):
    """The policy answered with a slate that breaks the contract."""


def _quote(value: Any, limit: int = QUOTE_CHARS) -> Any:
    """``value`` itself if its JSON text is at most ``limit`` characters; otherwise its text
    (the string itself for a string), cut to ``limit`` characters and marked with its full
    size. Values JSON cannot carry (NaN, an infinity) come back as their text."""
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("utf-8", errors="replace")
    exact = True
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, separators=(",", ":"),
                              allow_nan=False)
        except (TypeError, ValueError, RecursionError):
            text, exact = repr(value), False
    if len(text) <= limit:
        return value if exact else text
    return f"{text[:limit]}… ({len(text)} characters in all)"


def _bounded(error: Mapping[str, Any]) -> dict[str, Any]:
    """One validation error in FastAPI's shape, with every echoed value quoted by
    :func:`_quote`."""
    bounded: dict[str, Any] = {
        "type": error.get("type", "value_error"),
        "loc": [part if isinstance(part, int) else _quote(str(part))
                for part in error.get("loc", ())],
        "msg": _quote(str(error.get("msg", "")), 10 * QUOTE_CHARS),
    }
    if "input" in error:
        bounded["input"] = _quote(error["input"])
    if error.get("ctx"):
        # ctx can hold the exception raised by a validator: its text is what says why.
        bounded["ctx"] = {key: _quote(value if isinstance(value, int | float | bool | None)
                                     else str(value))
                          for key, value in error["ctx"].items()}
    return bounded


async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
    errors = list(error.errors())
    detail = [_bounded(each) for each in errors[:MAX_ERRORS]]
    if len(errors) > MAX_ERRORS:
        detail.append({"type": "too_many_errors", "loc": ["body"],
                       "msg": f"{len(errors) - MAX_ERRORS} more errors not listed "
                              f"({len(errors)} in all)"})
    return JSONResponse(status_code=422, content={"detail": detail})


async def _rank_request(request: Request) -> RankRequest:
    """The body, parsed and validated in one step by pydantic, so that every bad body
    (invalid UTF-8, JSON nested too deep, a wrong field) is the same kind of 422."""
    body = await request.body()
    try:
        return RankRequest.model_validate_json(body)
    except ValidationError as error:
        errors = [{**each, "loc": ("body", *each["loc"])}
                  for each in error.errors(include_url=False)]
        raise RequestValidationError(errors, body=body) from None


def _describe(error: BaseException) -> str:
    return _quote(f"{type(error).__name__}: {error}")


def _answer(policy: RankingPolicy, request: RankRequest) -> RankResponse:
    try:
        slate = policy.rank(request.context, request.candidates, request.k)
    except SlateError:
        raise  # the policy cannot answer this request: the client's to fix
    except Exception as error:
        _log.exception("policy %r failed on a /rank request", policy.name)
        raise _PolicyFailed(f"policy {policy.name!r} failed: {_describe(error)}") from None
    try:
        slate.check(request.candidates, request.k)
        return RankResponse(items=slate.items, propensities=slate.propensities,
                            scores=slate.scores, policy=policy.name)
    except SlateError as error:
        problem = str(error)
    except Exception as error:  # not a Slate at all, or fields of the wrong types
        problem = _describe(error)
    raise _BrokenSlate(f"policy {policy.name!r} broke the slate contract: {problem}")


class _BodyLimit:
    """Answers 413 to a request whose body is over ``max_body_bytes``, before the app sees it.

    The body is read here in full (it is at most ``max_body_bytes``) and handed on: an
    error raised from inside the app's own read would reach FastAPI's body parsing, which
    turns it into a 400.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._refuse(scope, receive, send, f"Content-Length={int(declared)}")
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before sending the whole body: no one to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._refuse(scope, receive, send,
                                   f"the body ({size} bytes read so far)")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        handed = False

        async def replay() -> Message:
            nonlocal handed
            if handed:
                return await receive()  # after the body: wait for the disconnect
            handed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, what: str) -> None:
        # The rest of the body is never read, so the connection cannot carry another
        # request: say so, and the server closes it after this answer.
        response = JSONResponse(
            status_code=413, headers={"connection": "close"},
            content={"detail": f"{what} is over max_body_bytes={self.max_body_bytes}"})
        await response(scope, receive, send)


def create_app(policy: RankingPolicy, max_body_bytes: int | None = None) -> FastAPI:
    """The app serving ``policy``; ``max_body_bytes`` defaults to the setting
    ``serving.max_body_bytes`` (:mod:`serving.settings`)."""
    if max_body_bytes is None:
        max_body_bytes = load().serving.max_body_bytes
    if max_body_bytes < 1:
        raise ValueError(f"max_body_bytes={max_body_bytes} must be at least 1")
    app = FastAPI(title="clickloop", summary=f"ranking with policy {policy.name!r}")
    app.add_middleware(_BodyLimit, max_body_bytes=max_body_bytes)
    app.add_exception_handler(RequestValidationError, _invalid)

    @app.exception_handler(SlateError)
    async def _unanswerable(request: Request, error: SlateError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": str(error)})

    @app.exception_handler(_PolicyFailed)
    @app.exception_handler(_BrokenSlate)
    async def _failed(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse(status_code=500, content={"detail": str(error)})

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "policy": policy.name}

    # The body is read by _rank_request, not by FastAPI; the schema is given for the docs.
    request_body = {"required": True, "content": {
        "application/json": {"schema": RankRequest.model_json_schema()}}}

    @app.post("/rank", openapi_extra={"requestBody": request_body})
    def rank(request: Annotated[RankRequest, Depends(_rank_request)]) -> RankResponse:
        return _answer(policy, request)

    return app
