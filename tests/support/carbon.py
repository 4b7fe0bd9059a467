"""A real Carbon plaintext listener for tests: a TCP server that records every line."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable


class CarbonListener:
    """Accepts connections on 127.0.0.1:`port` and collects the lines received.

    `stop()` closes the listening socket and every accepted connection (as a Carbon server
    going away does); `start()` again listens on the same port.
    """

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.lines: list[str] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._server: socket.socket | None = None
        self._clients: list[socket.socket] = []
        self._threads: list[threading.Thread] = []

    def start(self) -> CarbonListener:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(8)
        self.port = server.getsockname()[1]
        self._server = server
        thread = threading.Thread(target=self._accept, args=(server,), daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._clients.append(client)
            thread = threading.Thread(target=self._read, args=(client,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _read(self, client: socket.socket) -> None:
        buffer = b""
        while True:
            try:
                chunk = client.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            with self._lock:
                self.lines.extend(line.decode() for line in complete)

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            try:
                server.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            server.close()
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            try:
                client.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            client.close()
        for thread in self._threads:
            thread.join(2.0)
        self._threads = []

    def received(self) -> list[str]:
        with self._lock:
            return list(self.lines)

    def clear(self) -> None:
        with self._lock:
            self.lines = []

    def wait_for(self, done: Callable[[list[str]], bool], timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            lines = self.received()
            if done(lines):
                return lines
            if time.monotonic() > deadline:
                raise AssertionError(f"Carbon condition not met in {timeout} s; got {lines[-20:]}")
            time.sleep(0.05)

    def __enter__(self) -> CarbonListener:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
