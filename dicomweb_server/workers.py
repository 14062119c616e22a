"""Several uvicorn worker processes, each listening on its own socket of one port.

uvicorn's supervisor shares one listening socket among its workers, and asyncio accepts
every pending connection when it wakes: the first worker to wake takes a whole burst of
keep-alive connections (in the benchmark, 8 clients on one of two workers while the
other idled). Here every worker gets its own socket with SO_REUSEPORT, and the kernel
spreads connections across them by address hash. The parent only holds the sockets,
restarts a worker that dies, and stops them all on SIGINT/SIGTERM.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import threading
import time
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

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
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except BaseException:
        sock.close()
        raise
    return sock


def _worker(app: str, options: dict[str, Any], sock: socket.socket) -> None:
    import uvicorn

    uvicorn.Server(uvicorn.Config(app, **options)).run(sockets=[sock])


def run_workers(app: str, host: str, port: int, workers: int, **options: Any) -> int:
    """Serve ``app`` (an import string for uvicorn) from ``workers`` processes until
    SIGINT/SIGTERM; returns an exit status (1 when a worker could not start)."""
    socks = [listen(host, port)]
    port = socks[0].getsockname()[1]  # port 0: every socket on the one the kernel chose
    socks += [listen(host, port) for _ in range(workers - 1)]
    ctx = multiprocessing.get_context("spawn")
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    def start(sock: socket.socket) -> tuple[BaseProcess, float]:
        proc = ctx.Process(target=_worker, args=(app, options, sock), daemon=False)
        proc.start()
        return proc, time.monotonic()

    procs = [start(sock) for sock in socks]
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
                procs[i] = start(socks[i])
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
        for sock in socks:
            sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status
