"""Several uvicorn worker processes sharing one listening socket.

Which worker accepts a connection is decided by ``balanced_accept``: the one holding
the fewest connections, so keep-alive clients spread evenly over the workers. The
parent only holds the socket and the workers' connection board, restarts a worker that
dies, and stops them all on SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
import socket
import threading
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from dicomweb_server.balanced_accept import IDLE, Acceptor, Board

log = logging.getLogger(__name__)

# A worker that dies this soon after it started, this many times in a row, cannot start
# (bad settings, index unreachable): stop rather than restart it forever.
_STARTUP_SECONDS = 5.0
_QUICK_DEATHS = 3
_STOP_SECONDS = 30.0


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except BaseException:
        sock.close()
        raise
    return sock


def _counted(base: type[asyncio.Protocol], closed: Callable[[], None]) -> type[asyncio.Protocol]:
    """``base``, calling ``closed`` when its connection is lost."""

    class Counted(base):  # type: ignore[valid-type,misc]
        def connection_lost(self, exc: Exception | None) -> None:
            try:
                super().connection_lost(exc)
            finally:
                closed()

    return Counted


def _worker(
    app: str, options: dict[str, Any], sock: socket.socket, board: Board, slot: int
) -> None:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn, its connections accepted by an ``Acceptor`` instead of its own
        listening server; each is served by uvicorn's protocol as usual."""

        acceptor: Acceptor | None = None

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=[])  # the app's lifespan; no listener
            if self.should_exit:
                return
            config, loop = self.config, asyncio.get_running_loop()
            # A connection ends in its HTTP protocol or, once upgraded, in the WebSocket
            # protocol that took over its transport: both count it out.
            http = _counted(config.http_protocol_class, lambda: acceptor.closed())
            if config.ws_protocol_class is not None:
                config.ws_protocol_class = _counted(
                    config.ws_protocol_class, lambda: acceptor.closed()
                )

            def protocol() -> asyncio.Protocol:
                return http(  # type: ignore[call-arg]
                    config=config, server_state=self.server_state, app_state=self.lifespan.state
                )

            async def serve(conn: socket.socket) -> None:
                await loop.connect_accepted_socket(protocol, conn, ssl=config.ssl)

            acceptor = self.acceptor = Acceptor(sock, board, slot, serve)
            acceptor.start()

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            if self.acceptor is not None:
                self.acceptor.stop()
            await super().shutdown(sockets=None)

    Server(uvicorn.Config(app, **options)).run()


def run_workers(app: str, host: str, port: int, workers: int, **options: Any) -> int:
    """Serve ``app`` (an import string for uvicorn) from ``workers`` processes until
    SIGINT/SIGTERM; returns an exit status (1 when a worker could not start)."""
    sock = listen(host, port)
    ctx = multiprocessing.get_context("spawn")
    board: Board = ctx.RawArray("q", [IDLE] * workers)  # connections held, per worker
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    def start(slot: int) -> tuple[BaseProcess, float]:
        board[slot] = IDLE  # until the new worker accepts
        proc = ctx.Process(target=_worker, args=(app, options, sock, board, slot), daemon=False)
        proc.start()
        return proc, time.monotonic()

    procs = [start(slot) for slot in range(workers)]
    quick_deaths = [0] * workers
    status = 0
    try:
        while not stop.wait(0.5):
            for i, (proc, started) in enumerate(procs):
                if proc.is_alive():
                    continue
                quick = time.monotonic() - started < _STARTUP_SECONDS
                quick_deaths[i] = quick_deaths[i] + 1 if quick else 0
                if quick_deaths[i] >= _QUICK_DEATHS:
                    log.error(
                        "worker %d exited (%s) %d times right after starting; stopping",
                        proc.pid,
                        proc.exitcode,
                        _QUICK_DEATHS,
                    )
                    status = 1
                    stop.set()
                    break
                log.warning("worker %d exited (%s); starting another", proc.pid, proc.exitcode)
                procs[i] = start(i)
    finally:
        for proc, _ in procs:
            if proc.is_alive():
                proc.terminate()  # SIGTERM: uvicorn finishes the requests in flight
        deadline = time.monotonic() + _STOP_SECONDS
        for proc, _ in procs:
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join()
        sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status
