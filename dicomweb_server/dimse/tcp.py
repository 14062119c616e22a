"""TCP options for the associations we open (C-MOVE sub-operations, outbound SCU,
commitment reports).

A DIMSE message goes out as PDUs written in several small sends; with Nagle's algorithm
on, the last one waits for the peer's delayed ACK (about 40 ms), which held C-STORE to
about 17 instances/s per association. It is the sender's setting: on associations we
open, we send the datasets. The listener leaves it on: setting it there measured no gain
(69 vs 72/s) and made our answers to a C-FIND outrun a prompt C-CANCEL.
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
