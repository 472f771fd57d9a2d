"""A ranking policy behind an HTTP endpoint, driven by the simulator like any other.

``HttpPolicy("http://127.0.0.1:8000")`` implements :class:`ranking.slate.RankingPolicy` by
posting each request to ``{base_url}/rank`` over one kept-alive connection; wrap it in
:class:`simulation.policies.PerRequestPolicy` to put it in ``simulate`` or
``simulate_search``. Requests and answers are checked against the one schema of the
endpoint, :mod:`ranking.api`, on this side too: a request that :mod:`serving.app` would
refuse is not sent, and an answer that is not a slate is a :class:`RemotePolicyError`.
"""

from __future__ import annotations

import http.client
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from ranking.api import RankRequest, RankResponse
from ranking.slate import Slate


class RemotePolicyError(RuntimeError):
    """The endpoint could not be reached or refused a request; the message says which."""


def _problems(error: ValidationError, shown: int = 3) -> str:
    """The first ``shown`` problems as ``field: message``, without the values (which can be
    as long as the whole answer)."""
    problems = [f"{'.'.join(str(part) for part in each['loc']) or 'body'}: {each['msg']}"
                for each in error.errors(include_url=False)]
    more = f" (and {len(problems) - shown} more)" if len(problems) > shown else ""
    return "; ".join(problems[:shown]) + more


class HttpPolicy:
    def __init__(self, base_url: str, timeout_s: float = 10.0, name: str | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url={base_url!r} must look like http://host:port")
        self.base_url = base_url.rstrip("/")
        self.name = name or f"http:{self.base_url}"
        self._path = parts.path.rstrip("/") + "/rank"
        connection = (http.client.HTTPSConnection if parts.scheme == "https"
                      else http.client.HTTPConnection)
        self._connection = connection(parts.hostname, parts.port, timeout=timeout_s)

    def rank(self, context: Mapping[str, Any], candidates: Sequence[str], k: int) -> Slate:
        try:
            request = RankRequest(context=dict(context), candidates=list(candidates), k=k)
        except ValidationError as error:
            raise RemotePolicyError(f"POST {self.base_url}/rank: not sent, the request is "
                                    f"invalid: {_problems(error)}") from None
        status, payload = self._post(request.model_dump_json().encode())
        if status != 200:
            raise RemotePolicyError(f"POST {self.base_url}/rank answered {status}: "
                                    f"{payload[:2000].decode(errors='replace')}")
        try:
            answer = RankResponse.model_validate_json(payload)
        except ValidationError as error:
            raise RemotePolicyError(f"POST {self.base_url}/rank: the answer is not a slate: "
                                    f"{_problems(error)}") from None
        return Slate(answer.items, answer.propensities, answer.scores)

    def _post(self, body: bytes) -> tuple[int, bytes]:
        try:
            return self._exchange(body)
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            # The server closed the kept-alive connection between two requests: once more.
            self._connection.close()
        except (OSError, http.client.HTTPException) as error:  # refused, timeouts
            raise self._failed(error) from None
        try:
            return self._exchange(body)
        except (OSError, http.client.HTTPException) as error:
            raise self._failed(error) from None

    def _exchange(self, body: bytes) -> tuple[int, bytes]:
        self._connection.request("POST", self._path, body, {"Content-Type": "application/json"})
        response = self._connection.getresponse()
        return response.status, response.read()

    def _failed(self, error: Exception) -> RemotePolicyError:
        self._connection.close()
        return RemotePolicyError(f"POST {self.base_url}/rank failed: {error}")

    def close(self) -> None:
        self._connection.close()
