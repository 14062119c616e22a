"""The HTTP protocol the server runs: uvicorn's httptools protocol with our header limit
(``web/limits.py``), and single frames answered as soon as their request head is parsed.

A viewer scrolling a series asks for one frame per request, hundreds of times, and for
a frame already in memory the ASGI machinery (a task, a scope, the middleware stack,
two send messages) costs more than reading and sending the frame. So when the request
head is complete and nothing else is under way on the connection, ``FrameShortcut``
(``web/fast_frames.py``) is asked for the whole answer: the security gate's decision
and audit record, and the frame's bytes, each the same as the ASGI path's. When it has
one, the response is written here; when it has none (any doubt: credentials to check in
a thread, CORS, a frame not in memory, errors, ...) uvicorn's own path runs unchanged.

This leans on uvicorn's httptools protocol internals (``cycle``, ``pipeline``, ``flow``,
``on_response_complete``); ``tests/test_web_protocol.py`` pins that behaviour.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import httptools

from dicomweb_server.web.fast_frames import Answer
from dicomweb_server.web.limits import LimitedHttpToolsProtocol

log = logging.getLogger(__name__)

_STATUS_200 = b"HTTP/1.1 200 OK\r\n"


class DicomWebHttpProtocol(LimitedHttpToolsProtocol):
    _answered = False  # this request was answered here: the parser's later calls ignored
    _shortcut: Any = None
    _socket: int | None = None  # for sendfile: a plain TCP socket (not TLS)

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        # An access log line or a concurrency limit is uvicorn's to apply: no shortcut.
        if not self.access_log and self.limit_concurrency is None:
            self._shortcut = _shortcut_of(self.app)
        sock = transport.get_extra_info("socket")
        if sock is not None and transport.get_extra_info("sslcontext") is None:
            self._socket = sock.fileno()

    def on_message_begin(self) -> None:
        self._answered = False
        # A request pipelined behind one answered here: the keep-alive timer that answer
        # armed must not close the connection while this one is under way (uvicorn arms
        # it only when no request is pending).
        self._unset_keepalive_if_required()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        if self._shortcut is not None and self._answer_now():
            self._head_done = True
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._answered:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._answered:
            super().on_message_complete()

    def _answer_now(self) -> bool:
        """True when the whole response was written here."""
        parser = self.parser
        if (
            parser.get_method() != b"GET"
            or parser.should_upgrade()
            or self.expect_100_continue
            # Pipelined behind a response still being sent, or a client not reading:
            # uvicorn queues and waits.
            or (self.cycle is not None and not self.cycle.response_complete)
            or self.pipeline
            or self.flow.write_paused
            or self.transport.is_closing()
        ):
            return False
        url = httptools.parse_url(self.url)
        if url.query or b"%" in url.path:
            return False
        http_version = parser.get_http_version()
        # The scope uvicorn would build, which the shortcut reads as the ASGI path does.
        scope = self.scope
        scope["method"] = "GET"
        if http_version != "1.1":
            scope["http_version"] = http_version
        scope["path"] = self.root_path + url.path.decode("ascii")
        scope["raw_path"] = self.root_path.encode("ascii") + url.path
        scope["query_string"] = b""
        try:
            found = self._shortcut.answer(scope, self._socket is not None)
        except Exception:  # nothing was written: the general path answers, and logs
            log.exception("frame shortcut failed; the request goes the general way")
            return False
        if found is None:
            return False
        keep_alive = http_version != "1.0" and parser.should_keep_alive()
        content = [_STATUS_200]
        for name, value in (*self.server_state.default_headers, *found.headers):
            content += (name, b": ", value, b"\r\n")
        if not keep_alive:
            content.append(b"connection: close\r\n")
        content.append(b"\r\n")
        self._answered = True
        self._send(b"".join(content), found)
        if not keep_alive:
            self.transport.close()
        # What uvicorn does after each response: count it, resume reading, and arm the
        # keep-alive timer (or start a queued request, of which there is none here).
        self.on_response_complete()
        return True

    def _send(self, head: bytes, found: Answer) -> None:
        transport = self.transport
        # One writev for the HTTP head and what follows: a write of its own would cost
        # a syscall and a packet.
        transport.writelines((head, found.body))
        if found.file is None:
            return
        fd, offset, length = found.file
        try:
            self._send_file(fd, offset, length, found.tail)
        except Exception:
            # The head is out: nothing else may be written on this connection (uvicorn
            # would take the exception for a parse error and answer 400 mid-body).
            log.exception("sending a frame failed; the connection is closed")
            transport.abort()
        finally:
            os.close(fd)

    def _send_file(self, fd: int, offset: int, length: int, tail: bytes) -> None:
        transport = self.transport
        sent = 0
        # Straight to the socket only while the transport holds nothing unsent, so the
        # bytes keep their order.
        if self._socket is not None and transport.get_write_buffer_size() == 0:
            try:
                sent = os.sendfile(self._socket, fd, offset, length)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:  # the client is gone
                transport.close()
                return
        if sent < length:
            # The socket took only part: the rest goes through the transport, which
            # waits for the client. The pages were in memory a moment ago.
            rest = os.pread(fd, length - sent, offset + sent)
            if len(rest) != length - sent:  # stored files do not shrink; if one did
                transport.abort()
                return
            transport.write(rest)
        transport.write(tail)


def _shortcut_of(app: Any) -> Any:
    """The ``FrameShortcut`` the app was built with, through any wrapping middleware."""
    for _ in range(8):
        state = getattr(app, "state", None)
        shortcut = getattr(state, "frame_shortcut", None) if state is not None else None
        if shortcut is not None:
            return shortcut
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None
