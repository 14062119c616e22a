"""A header size limit for uvicorn's httptools protocol, which has none of its own.

uvicorn bounds request heads only in its h11 protocol (``h11_max_incomplete_event_size``);
with httptools (the fast one, which ``uvicorn[standard]`` selects) a client can send
headers without end and the server buffers them all. This subclass counts the bytes
received while a request head is incomplete and answers 431 (RFC 6585 5) once they pass
the same setting, so both protocols share one limit (``max_header_bytes``). The CLI
selects it by import string; it needs nothing from the rest of the package.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_BODY = b"request header fields too large"
_REPLY = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: " + str(len(_BODY)).encode() + b"\r\n"
    b"connection: close\r\n\r\n" + _BODY
)


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    _head_done = False
    _head_bytes = 0

    def on_message_begin(self) -> None:
        self._head_done = False
        self._head_bytes = 0
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._head_done = True
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        limit = self.config.h11_max_incomplete_event_size or 64 * 1024
        if not self._head_done and self._head_bytes > limit:
            self.logger.warning("request head over %d bytes refused (431)", limit)
            self.transport.write(_REPLY)
            self.transport.close()
            return
        super().data_received(data)
        if not self._head_done:
            # Only chunks that did not finish the head count: a body in the same
            # chunk as the last header line is not header bytes.
            self._head_bytes += len(data)
