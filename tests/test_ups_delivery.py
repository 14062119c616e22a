"""EventHub: one tailer per process hands queued reports to the local listeners."""

from __future__ import annotations

import asyncio

import pytest

from dicomweb_server.services.ups_delivery import EventHub, Listener, Overflow
from dicomweb_server.storage.interfaces import NewEvent
from dicomweb_server.storage.sql.index import SqlIndex
from dicomweb_server.storage.sql.ups_events import SqlSubscriptions


def test_a_listener_that_falls_behind_overflows_once() -> None:
    async def scenario() -> None:
        listener = Listener("AE", max_queue=3)
        for n in range(10):
            listener.offer(b"%d" % n)
        assert listener.overflowed
        assert [await listener.next() for _ in range(2)] == [b"1", b"2"]
        with pytest.raises(Overflow):
            await listener.next()

    asyncio.run(scenario())


def test_hub_delivers_new_events_in_order_to_the_connected_aes_only(index: SqlIndex) -> None:
    store = SqlSubscriptions(index)
    store.subscribe("OLD", "1.2.3", False, lambda: NewEvent("OLD", "1.2.3", b"before"))

    async def scenario() -> None:
        hub = EventHub(store, poll_seconds=0.01)
        a1, a2, b = await hub.connect("A"), await hub.connect("A"), await hub.connect("B")
        assert hub.connected == 3
        for n in range(5):
            store.publish("1.2.3", [("A", False)], b"%d" % n, None)
        store.subscribe("C", "1.2.3", False, lambda: NewEvent("C", "1.2.3", b"not here"))
        for listener in (a1, a2):
            got = [await asyncio.wait_for(listener.next(), 10) for _ in range(5)]
            assert got == [b"0", b"1", b"2", b"3", b"4"]
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(b.next(), 0.2)
        for listener in (a1, a2, b):
            hub.disconnect(listener)
        assert hub.connected == 0
        await hub.aclose()

    asyncio.run(scenario())
