"""The MLLP listener: HL7 v2 messages in, acknowledgements out, over TCP.

MLLP (HL7 v2.5 Appendix C, Release 1 framing): each message is a block
``<VT> message <FS><CR>``; the receiver answers each block with one ACK block on the
same connection, in order. python-hl7's asyncio server accepts the connections; an
event loop runs in a thread of the `serve` parent process (like the DIMSE listener,
exactly one per deployment). Each message is processed in a worker thread, so a slow
index write never stalls the other connections.

Robustness: bytes outside a block (before its <VT>) are ignored; a block larger than
``hl7_max_message_bytes`` gets a reject and the connection is closed (the rest of the
stream cannot be trusted); a connection that sends no complete block for
``hl7_idle_timeout`` seconds is closed, and at most ``hl7_max_connections`` are served
at once, only from ``hl7_allowed_peers`` when that is set (MLLP itself has no
authentication). A peer that disconnects mid-block loses only that block (it had no ACK, so
it will resend it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import logging
import threading
from collections.abc import Callable
from typing import Any

from hl7.mllp import start_hl7_server
from hl7.mllp.streams import CARRIAGE_RETURN, END_BLOCK, START_BLOCK

from dicomweb_server.config import Settings
from dicomweb_server.hl7v2.ack import build_ack
from dicomweb_server.hl7v2.codes import APPLICATION_INTERNAL_ERROR, OrderRejected
from dicomweb_server.hl7v2.orders import Header

log = logging.getLogger(__name__)

# One block's payload and the peer's address -> the reply's payload.
Handler = Callable[[bytes, str], bytes]
_SEPARATOR = END_BLOCK + CARRIAGE_RETURN


def _too_large(limit: int) -> bytes:
    rejected = OrderRejected(
        APPLICATION_INTERNAL_ERROR, f"message larger than {limit} bytes", ack_code="AR"
    )
    return build_ack(Header(), rejected).encode()


class MllpListener:
    """Serves ``handler`` on (host, hl7_port) until ``stop``."""

    def __init__(
        self,
        settings: Settings,
        handler: Handler,
        refused: Callable[[str, str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.handler = handler
        # Told (peer address, why) of each connection refused.
        self.refused = refused
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="hl7-mllp", daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._allowed = [ipaddress.ip_network(p, strict=False) for p in settings.hl7_allowed_peers]
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, settings.hl7_max_connections), thread_name_prefix="hl7"
        )

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def start(self) -> None:
        """Bind and listen; raises OSError (e.g. address in use) if it cannot."""
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        try:
            self._server = future.result(timeout=30)
        except BaseException:
            self._shutdown_loop()
            raise
        log.info("HL7 MLLP listener on %s:%d", self.settings.host, self.port)

    async def _start(self) -> asyncio.Server:
        # The reader's limit bounds one block: readuntil refuses to buffer more.
        server: asyncio.Server = await start_hl7_server(
            self._connection,
            self.settings.host,
            self.settings.hl7_port,
            limit=self.settings.hl7_max_message_bytes,
        )
        return server

    def stop(self) -> None:
        """Stop accepting, close open connections, end the loop thread."""
        if self._thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(self._close(), self._loop)
            with contextlib.suppress(Exception):
                future.result(timeout=10)
        self._shutdown_loop()
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        # Let each connection end itself (a message being applied finishes; its ACK
        # cannot go out, so the sender will resend it, and applying is idempotent).
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

    def _shutdown_loop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        if not self._loop.is_running():
            self._loop.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        peer = writer.get_extra_info("peername")
        why = ""
        if not self._allowed_peer(peer):
            why = "not in hl7_allowed_peers"
        elif len(self._writers) >= self.settings.hl7_max_connections:
            why = f"{len(self._writers)} connections open (hl7_max_connections)"
        if why:
            log.warning("HL7: refusing %s: %s", peer, why)
            writer.transport.abort()
            if self.refused is not None:
                address = str(peer[0]) if isinstance(peer, tuple) and peer else ""
                self.refused(address, why)
            return
        self._writers.add(writer)
        try:
            await self._serve(reader, writer, peer)
        except (ConnectionError, OSError) as exc:
            log.info("HL7: connection from %s lost: %s", peer, exc)
        except Exception:  # never let one connection's trouble reach the loop
            log.exception("HL7: connection from %s failed", peer)
        finally:
            self._writers.discard(writer)
            writer.close()

    def _allowed_peer(self, peer: Any) -> bool:
        if not self._allowed:
            return True
        try:
            address = ipaddress.ip_address(str(peer[0]))
        except (ValueError, TypeError, IndexError):
            return False
        return any(address in network for network in self._allowed)

    async def _serve(self, reader: asyncio.StreamReader, writer: Any, peer: Any) -> None:
        loop = asyncio.get_running_loop()
        limit = self.settings.hl7_max_message_bytes
        while True:
            try:
                block = await asyncio.wait_for(
                    reader.readuntil(_SEPARATOR), self.settings.hl7_idle_timeout
                )
            except asyncio.IncompleteReadError as exc:
                if exc.partial.strip():
                    log.warning("HL7: %s closed in the middle of a message", peer)
                return
            except asyncio.LimitOverrunError:
                log.warning("HL7: message from %s is larger than %d bytes", peer, limit)
                writer.write(START_BLOCK + _too_large(limit) + _SEPARATOR)
                await writer.drain()
                return
            except TimeoutError:
                log.info("HL7: closing %s, idle for %d s", peer, self.settings.hl7_idle_timeout)
                return
            start = block.find(START_BLOCK)
            if start < 0:
                log.warning("HL7: ignored %d bytes from %s outside a block", len(block), peer)
                continue
            payload = block[start + 1 : -len(_SEPARATOR)]
            address = str(peer[0]) if isinstance(peer, tuple) and peer else ""
            reply = await loop.run_in_executor(self._executor, self.handler, payload, address)
            writer.write(START_BLOCK + reply + _SEPARATOR)
            await writer.drain()
