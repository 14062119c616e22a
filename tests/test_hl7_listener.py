"""The MLLP listener over real sockets, with python-hl7's own asyncio client, against a
recording callback (the workitem side is tested in test_hl7_server.py)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import hl7
import pytest
from hl7.mllp import open_hl7_connection

from dicomweb_server.config import Settings
from dicomweb_server.hl7v2.handler import handle_message
from dicomweb_server.hl7v2.listener import MllpListener
from dicomweb_server.hl7v2.orders import OrderMessage
from tests.conftest import free_port
from tests.hl7samples import omi

SB, EB = b"\x0b", b"\x1c\r"


class Recorder:
    def __init__(self) -> None:
        self.messages: list[OrderMessage] = []
        self.lock = threading.Lock()

    def apply(self, message: OrderMessage) -> str:
        with self.lock:
            self.messages.append(message)
        return f"{len(message.orders)} order(s) accepted"

    def handle(self, payload: bytes, peer: str) -> bytes:
        assert peer == "127.0.0.1"
        return handle_message(payload, self.apply).reply


@pytest.fixture(scope="module")
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture(scope="module")
def listener(recorder: Recorder) -> Iterator[MllpListener]:
    settings = Settings(
        hl7_enabled=True,
        hl7_port=free_port(),
        hl7_max_connections=4,
        hl7_max_message_bytes=4096,
        hl7_idle_timeout=2,
    )
    mllp = MllpListener(settings, recorder.handle)
    mllp.start()
    yield mllp
    mllp.stop()


async def _send(port: int, *messages: str) -> list[hl7.Message]:
    reader, writer = await open_hl7_connection("127.0.0.1", port)
    try:
        replies = []
        for text in messages:
            writer.writemessage(hl7.parse(text))
            await writer.drain()
            replies.append(await asyncio.wait_for(reader.readmessage(), 30))
        return replies
    finally:
        writer.close()
        await writer.wait_closed()


def send(port: int, *messages: str) -> list[hl7.Message]:
    return asyncio.run(_send(port, *messages))


def _raw(port: int, data: bytes, *, replies: int = 1, timeout: float = 30) -> list[bytes]:
    """Send raw bytes, read ``replies`` MLLP blocks (fewer if the server closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        buffer = b""
        blocks: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(blocks) < replies and time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:  # refused connections are aborted
                break
            if not chunk:
                break
            buffer += chunk
            while EB in buffer:
                block, buffer = buffer.split(EB, 1)
                blocks.append(block[block.index(SB) + 1 :])
        return blocks


def _msa(block: bytes) -> tuple[str, str]:
    msa = hl7.parse(block.decode()).segment("MSA")
    return str(msa(1)), str(msa(2))


def test_library_client_gets_an_ack_per_message_in_order(
    listener: MllpListener, recorder: Recorder
) -> None:
    before = len(recorder.messages)
    replies = send(listener.port, omi(control_id="L1"), omi(control_id="L2", accession="ACC0002"))
    assert [(str(r.segment("MSA")(1)), str(r.segment("MSA")(2))) for r in replies] == [
        ("AA", "L1"),
        ("AA", "L2"),
    ]
    assert [m.control_id for m in recorder.messages[before:]] == ["L1", "L2"]


def test_malformed_message_gets_a_nak_and_is_not_applied(
    listener: MllpListener, recorder: Recorder
) -> None:
    before = len(recorder.messages)
    [reply] = send(listener.port, omi(control_id="BAD1", patient_id=""))
    assert (str(reply.segment("MSA")(1)), str(reply.segment("MSA")(2))) == ("AE", "BAD1")
    assert str(reply.segment("ERR")(3)).startswith("101^")
    assert len(recorder.messages) == before


def test_garbage_outside_blocks_is_ignored(listener: MllpListener) -> None:
    data = b"\x00\x01garbage\r\n" + EB + SB + omi(control_id="G1").encode() + EB
    [block] = _raw(listener.port, data)
    assert _msa(block) == ("AA", "G1")


def test_a_block_that_is_not_hl7_gets_a_reject(listener: MllpListener) -> None:
    [block] = _raw(listener.port, SB + b"\xff\xfe not hl7 at all" + EB)
    assert hl7.parse(block.decode("latin-1")).segment("MSA")(1) == ["AR"]


def test_partial_frames_and_disconnects_leave_the_listener_serving(
    listener: MllpListener,
) -> None:
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as sock:
            sock.sendall(SB + omi().encode()[:40])  # half a message, then gone
    with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as sock:
        sock.sendall(SB)
        time.sleep(0.2)
        sock.sendall(omi(control_id="SPLIT").encode()[:100])  # a block in pieces
        time.sleep(0.2)
        sock.sendall(omi(control_id="SPLIT").encode()[100:] + EB)
        data = b""
        while EB not in data:
            chunk = sock.recv(65536)
            assert chunk
            data += chunk
    assert _msa(data.split(EB)[0][1:]) == ("AA", "SPLIT")
    [reply] = send(listener.port, omi(control_id="AFTER"))
    assert str(reply.segment("MSA")(1)) == "AA"


def test_oversized_message_is_rejected_and_the_connection_closed(
    listener: MllpListener,
) -> None:
    huge = omi(control_id="HUGE") + "NTE|1||" + "x" * 8000 + "\r"
    blocks = _raw(listener.port, SB + huge.encode() + EB + SB + omi().encode() + EB, replies=2)
    assert len(blocks) == 1  # the second message was not read: the stream was dropped
    assert hl7.parse(blocks[0].decode()).segment("MSA")(1) == ["AR"]
    [reply] = send(listener.port, omi(control_id="NEXT"))
    assert str(reply.segment("MSA")(1)) == "AA"


def test_idle_connections_are_closed(listener: MllpListener) -> None:
    with socket.create_connection(("127.0.0.1", listener.port), timeout=30) as sock:
        start = time.monotonic()
        assert sock.recv(10) == b""  # closed by the server
        assert 1 < time.monotonic() - start < 20


def test_connections_beyond_the_limit_are_refused(listener: MllpListener) -> None:
    held = [socket.create_connection(("127.0.0.1", listener.port), timeout=10) for _ in range(4)]
    try:
        time.sleep(0.3)
        with (
            socket.create_connection(("127.0.0.1", listener.port), timeout=10) as extra,
            contextlib.suppress(ConnectionResetError),
        ):
            assert extra.recv(10) == b""
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the server notices the closes
        try:
            [reply] = send(listener.port, omi(control_id="LIMIT"))
            break
        except (ConnectionError, asyncio.IncompleteReadError):
            time.sleep(0.2)
    assert str(reply.segment("MSA")(1)) == "AA"


def test_port_in_use_raises() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        busy = Settings(hl7_enabled=True, hl7_port=sock.getsockname()[1])
        with pytest.raises(OSError):
            MllpListener(busy, lambda payload, peer: payload).start()


def test_stop_finishes_the_message_being_applied_and_does_not_wait_for_idle_peers() -> None:
    applied: list[str] = []
    started = threading.Event()

    def slow(payload: bytes, peer: str) -> bytes:
        started.set()
        time.sleep(1)
        applied.append(payload.decode()[:3])
        return b"MSH|^~\\&|ACK"

    settings = Settings(hl7_enabled=True, hl7_port=free_port(), hl7_idle_timeout=600)
    mllp = MllpListener(settings, slow)
    mllp.start()
    idle = socket.create_connection(("127.0.0.1", mllp.port), timeout=10)
    busy = socket.create_connection(("127.0.0.1", mllp.port), timeout=10)
    try:
        busy.sendall(SB + omi().encode() + EB)
        assert started.wait(10)
        begin = time.monotonic()
        mllp.stop()
        assert time.monotonic() - begin < 10
        assert applied == ["MSH"]  # the message in progress was applied, not cut off
        assert idle.recv(10) == b""
    finally:
        idle.close()
        busy.close()


@pytest.mark.parametrize(("allowed", "served"), [(("10.0.0.0/8",), False), (("127.0.0.1",), True)])
def test_only_allowed_peers_are_served(allowed: tuple[str, ...], served: bool) -> None:
    recorder = Recorder()
    refusals: list[tuple[str, str]] = []
    settings = Settings(hl7_enabled=True, hl7_port=free_port(), hl7_allowed_peers=allowed)
    mllp = MllpListener(settings, recorder.handle, lambda peer, why: refusals.append((peer, why)))
    mllp.start()
    try:
        blocks = _raw(mllp.port, SB + omi(control_id="PEER").encode() + EB, timeout=10)
    finally:
        mllp.stop()
    assert (blocks != []) == served
    assert len(recorder.messages) == int(served)
    assert refusals == ([] if served else [("127.0.0.1", "not in hl7_allowed_peers")])
