"""TCP options for every association, ours and theirs.

A DIMSE message goes out as PDUs written in several small sends; with Nagle's algorithm
on, the last one waits for the peer's delayed ACK (about 40 ms), which held C-STORE to
about 17 instances/s per association whatever the archive's speed. Each side can only
switch it off for what it sends, so both the listener's and our outbound associations do.
"""

from __future__ import annotations

import socket
from typing import Any

from pynetdicom import evt
from pynetdicom.events import Event


def no_delay(event: Event) -> None:
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


# evt_handlers for AE.associate and AE.start_server.
NO_DELAY: list[Any] = [(evt.EVT_CONN_OPEN, no_delay)]
