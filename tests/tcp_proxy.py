"""A TCP proxy on loopback in front of a real server, that fails on demand: for outage tests.

``down()`` closes every open connection and refuses new ones (they are accepted and closed at once, as a
dead backend behind a load balancer looks); ``up()`` forwards again. ``plan`` says what befalls the next
connections, one ``Fault`` each in order: cut after so many bytes from the backend (a download cut
mid-way), or held for a while before it reaches the backend (so that a short-lived link expires on the
way). ``status_lines`` records the HTTP status line of every answer that came back through it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass
from types import TracebackType

__all__ = ["Fault", "TcpProxy"]

_PIECE = 64 * 1024


@dataclass(frozen=True)
class Fault:
    cut_after: int | None = None  # bytes from the backend, then the connection is closed
    delay_s: float = 0.0  # before connecting to the backend


class TcpProxy:
    def __init__(self, backend_port: int) -> None:
        self.backend_port = backend_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._up = True
        self._open: set[socket.socket] = set()
        self.connections = 0  # accepted so far
        self.refused = 0  # accepted while down, and closed at once
        self.plan: list[Fault] = []
        self.status_lines: list[str] = []
        self._stopped = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def down(self) -> None:
        with self._lock:
            self._up = False
            for sock in list(self._open):
                _close(sock)
            self._open.clear()

    def up(self) -> None:
        with self._lock:
            self._up = True

    def close(self) -> None:
        self._stopped = True
        self.down()
        _close(self._listener)
        self._thread.join(5)

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                if not self._up:
                    self.refused += 1
                    _close(client)
                    continue
                fault = self.plan.pop(0) if self.plan else Fault()
                self._open.add(client)
            threading.Thread(target=self._serve, args=(client, fault), daemon=True).start()

    def _serve(self, client: socket.socket, fault: Fault) -> None:
        if fault.delay_s:
            time.sleep(fault.delay_s)
        try:
            backend = socket.create_connection(("127.0.0.1", self.backend_port), timeout=10)
        except OSError:
            self._forget(client)
            return
        backend.settimeout(None)
        with self._lock:
            if client not in self._open:  # went down meanwhile
                _close(backend)
                return
            self._open.add(backend)
        threading.Thread(target=self._pipe, args=(client, backend, None), daemon=True).start()
        self._pipe(backend, client, fault.cut_after, answers=True)

    def _pipe(
        self, source: socket.socket, target: socket.socket, limit: int | None, *, answers: bool = False
    ) -> None:
        sent = 0
        try:
            while True:
                data = source.recv(_PIECE)
                if not data:
                    break
                if answers and data.startswith(b"HTTP/1."):
                    self.status_lines.append(data.split(b"\r\n", 1)[0].decode("latin-1"))
                if limit is not None and sent + len(data) >= limit:
                    target.sendall(data[: limit - sent])
                    break
                target.sendall(data)
                sent += len(data)
        except OSError:
            pass
        self._forget(source, target)

    def _forget(self, *socks: socket.socket) -> None:
        with self._lock:
            for sock in socks:
                self._open.discard(sock)
                _close(sock)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
