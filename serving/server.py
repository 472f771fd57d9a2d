"""Run an ASGI app with uvicorn on a loopback port in a background thread.

For notebooks and tests that drive a policy over real HTTP from the same process::

    with BackgroundServer(create_app(policy)) as server:
        simulate(world, PerRequestPolicy(HttpPolicy(server.url)), ...)
"""

from __future__ import annotations

import threading
import time
from types import TracebackType

import uvicorn


class BackgroundServer:
    def __init__(self, app: object, host: str = "127.0.0.1", port: int = 0,
                 start_timeout_s: float = 20.0) -> None:
        self._server = uvicorn.Server(uvicorn.Config(app, host=host, port=port,
                                                     log_level="warning", access_log=False))
        self._thread = threading.Thread(target=self._server.run, name="uvicorn", daemon=True)
        self._host, self._timeout = host, start_timeout_s
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def start(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + self._timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the HTTP server on {self._host}:{self.port} stopped "
                                   "while starting (is the port taken?)")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the HTTP server did not start within {self._timeout} s")
            time.sleep(0.01)
        # Port 0 asks the OS for a free port; read back the one it gave.
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(self._timeout)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()
