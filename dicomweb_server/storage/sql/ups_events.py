"""UPS subscriptions and queued event reports in the index (schema v6): the SubscriptionStore.

Event reports go to a table that every server process tails (``events_after``). For a
reader that remembers the last id it saw to miss nothing, ids must become visible in
increasing order: on SQLite one writer at a time guarantees it; on PostgreSQL every
transaction that inserts events first takes one advisory transaction lock, so the
sequence is drawn and committed by one transaction at a time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import orjson
from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Connection

from dicomweb_server.storage.interfaces import EventRow, GlobalSubscription, NewEvent
from dicomweb_server.storage.sql.index import SqlIndex
from dicomweb_server.storage.sql.models import UpsEvent, UpsGlobalSubscription, UpsSubscription

_SUB = UpsSubscription.__table__  # type: ignore[attr-defined]
_GLOBAL = UpsGlobalSubscription.__table__  # type: ignore[attr-defined]
_EVENT = UpsEvent.__table__  # type: ignore[attr-defined]

# Any constant: the PostgreSQL advisory lock that orders event inserts ("upsevent").
_EVENT_LOCK = 0x7570736576656E74


class SqlSubscriptions:
    """Shares the index's engines (and its SQLite writer lock)."""

    def __init__(self, index: SqlIndex) -> None:
        self.index = index

    # -- helpers ---------------------------------------------------------------------

    def _write(self, work: Callable[[Connection], Any]) -> Any:
        def locked(conn: Connection) -> Any:
            if self.index.dialect == "postgresql":
                conn.execute(select(func.pg_advisory_xact_lock(_EVENT_LOCK)))
            return work(conn)

        return self.index._write(locked)

    @staticmethod
    def _add_events(conn: Connection, events: Sequence[NewEvent]) -> None:
        if events:
            now = time.time()
            conn.execute(
                _EVENT.insert(),
                [
                    {
                        "created_at": now,
                        "ae_title": e.ae_title,
                        "workitem_uid": e.workitem_uid,
                        "message": e.message,
                    }
                    for e in events
                ],
            )

    @staticmethod
    def _state(conn: Connection, ae_title: str, workitem_uid: str) -> Any:
        return conn.execute(
            select(_SUB.c.pk, _SUB.c.subscribed).where(
                _SUB.c.ae_title == ae_title, _SUB.c.workitem_uid == workitem_uid
            )
        ).first()

    @staticmethod
    def _has_global(conn: Connection, ae_title: str) -> bool:
        found = conn.execute(select(_GLOBAL.c.kind).where(_GLOBAL.c.ae_title == ae_title)).first()
        return found is not None

    # -- subscriptions ---------------------------------------------------------------

    def subscribe(
        self,
        ae_title: str,
        workitem_uid: str,
        deletion_lock: bool,
        initial: Callable[[], NewEvent | None],
    ) -> None:
        def work(conn: Connection) -> None:
            # Read under the event lock: a change committed meanwhile is either in this
            # report or queued after it for the (by then) subscribed AE.
            report = initial()
            row = self._state(conn, ae_title, workitem_uid)
            values = {"deletion_lock": deletion_lock, "subscribed": True}
            if row is None:
                conn.execute(
                    _SUB.insert().values(
                        ae_title=ae_title,
                        workitem_uid=workitem_uid,
                        created_at=time.time(),
                        **values,
                    )
                )
            else:
                conn.execute(update(_SUB).where(_SUB.c.pk == row.pk).values(**values))
            self._add_events(conn, [report] if report else [])

        self._write(work)

    def unsubscribe(self, ae_title: str, workitem_uid: str) -> bool:
        def work(conn: Connection) -> bool:
            row = self._state(conn, ae_title, workitem_uid)
            if row is None or not row.subscribed:
                return False
            if self._has_global(conn, ae_title):
                # Stays "Not Subscribed": the global subscription must not re-subscribe it.
                conn.execute(update(_SUB).where(_SUB.c.pk == row.pk).values(subscribed=False))
            else:
                conn.execute(delete(_SUB).where(_SUB.c.pk == row.pk))
            return True

        return bool(self._write(work))

    def subscribe_globally(
        self,
        subscription: GlobalSubscription,
        workitems: Callable[[], Mapping[str, NewEvent | None]],
    ) -> list[str]:
        aet = subscription.ae_title

        def work(conn: Connection) -> list[str]:
            reports = workitems()  # under the event lock, as in `subscribe`
            key = (_GLOBAL.c.ae_title == aet) & (_GLOBAL.c.kind == subscription.kind)
            conn.execute(delete(_GLOBAL).where(key))
            conn.execute(
                _GLOBAL.insert().values(
                    ae_title=aet,
                    kind=subscription.kind,
                    deletion_lock=subscription.deletion_lock,
                    filter_json=orjson.dumps(subscription.filter).decode(),
                    created_at=time.time(),
                )
            )
            rows = conn.execute(
                select(_SUB.c.workitem_uid, _SUB.c.subscribed).where(_SUB.c.ae_title == aet)
            ).all()
            subscribed = {r.workitem_uid for r in rows if r.subscribed}
            not_subscribed = {r.workitem_uid for r in rows if not r.subscribed}
            added = [uid for uid in reports if uid not in subscribed]
            now, lock = time.time(), subscription.deletion_lock
            for uid in added:
                if uid in not_subscribed:
                    conn.execute(
                        update(_SUB)
                        .where(_SUB.c.ae_title == aet, _SUB.c.workitem_uid == uid)
                        .values(subscribed=True, deletion_lock=lock)
                    )
                else:
                    conn.execute(
                        _SUB.insert().values(
                            ae_title=aet, workitem_uid=uid, deletion_lock=lock, created_at=now
                        )
                    )
            self._add_events(conn, [e for e in (reports[uid] for uid in added) if e is not None])
            return added

        return list(self._write(work))

    def unsubscribe_globally(self, ae_title: str, kind: str) -> bool:
        def work(conn: Connection) -> bool:
            found = conn.execute(
                delete(_GLOBAL).where(_GLOBAL.c.ae_title == ae_title, _GLOBAL.c.kind == kind)
            ).rowcount
            if not found:
                return False
            # PS3.4 Table CC.2.3-2 "AE Unsubscribes Globally": every subscription goes.
            conn.execute(delete(_GLOBAL).where(_GLOBAL.c.ae_title == ae_title))
            conn.execute(delete(_SUB).where(_SUB.c.ae_title == ae_title))
            return True

        return bool(self._write(work))

    def suspend(self, ae_title: str, kind: str) -> bool:
        def work(conn: Connection) -> bool:
            found = conn.execute(
                delete(_GLOBAL).where(_GLOBAL.c.ae_title == ae_title, _GLOBAL.c.kind == kind)
            ).rowcount
            if found and not self._has_global(conn, ae_title):
                # Nothing can re-subscribe the AE now: the "Not Subscribed" marks are moot.
                conn.execute(
                    delete(_SUB).where(_SUB.c.ae_title == ae_title, _SUB.c.subscribed.is_(False))
                )
            return bool(found)

        return bool(self._write(work))

    def global_subscriptions(self) -> list[GlobalSubscription]:
        with self.index.read_engine.connect() as conn:
            rows = conn.execute(select(_GLOBAL).order_by(_GLOBAL.c.ae_title, _GLOBAL.c.kind)).all()
        return [
            GlobalSubscription(
                r.ae_title,
                r.kind,
                bool(r.deletion_lock),
                tuple((str(k), str(v)) for k, v in orjson.loads(r.filter_json)),
            )
            for r in rows
        ]

    def subscribers(self, workitem_uid: str) -> dict[str, bool]:
        with self.index.read_engine.connect() as conn:
            rows = conn.execute(
                select(_SUB.c.ae_title, _SUB.c.deletion_lock).where(
                    _SUB.c.workitem_uid == workitem_uid, _SUB.c.subscribed.is_(True)
                )
            ).all()
        return {r.ae_title: bool(r.deletion_lock) for r in rows}

    # -- events ----------------------------------------------------------------------

    def publish(
        self,
        workitem_uid: str,
        joining: Sequence[tuple[str, bool]],
        message: bytes,
        initial: Callable[[], bytes] | None,
    ) -> list[str]:
        def work(conn: Connection) -> list[str]:
            rows = conn.execute(
                select(_SUB.c.ae_title, _SUB.c.subscribed).where(
                    _SUB.c.workitem_uid == workitem_uid
                )
            ).all()
            known = {r.ae_title for r in rows}
            recipients = [r.ae_title for r in rows if r.subscribed]
            events: list[NewEvent] = []
            now = time.time()
            state: bytes | None = None
            for aet, lock in joining:
                if aet in known:
                    continue
                known.add(aet)
                conn.execute(
                    _SUB.insert().values(
                        ae_title=aet, workitem_uid=workitem_uid, deletion_lock=lock, created_at=now
                    )
                )
                if initial is not None:
                    state = state or initial()
                    events.append(NewEvent(aet, workitem_uid, state))
                recipients.append(aet)
            events += [NewEvent(aet, workitem_uid, message) for aet in sorted(set(recipients))]
            self._add_events(conn, events)
            return sorted(set(recipients))

        return list(self._write(work))

    def last_event_id(self) -> int:
        with self.index.read_engine.connect() as conn:
            return int(conn.execute(select(func.max(_EVENT.c.id))).scalar() or 0)

    def events_after(
        self, event_id: int, ae_titles: Collection[str], limit: int
    ) -> tuple[list[EventRow], int]:
        with self.index.read_engine.connect() as conn:
            top = int(conn.execute(select(func.max(_EVENT.c.id))).scalar() or 0)
            if top <= event_id or not ae_titles:
                return [], max(top, event_id)
            rows = conn.execute(
                select(_EVENT.c.id, _EVENT.c.ae_title, _EVENT.c.workitem_uid, _EVENT.c.message)
                .where(
                    _EVENT.c.id > event_id,
                    _EVENT.c.id <= top,
                    _EVENT.c.ae_title.in_(sorted(ae_titles)),
                )
                .order_by(_EVENT.c.id)
                .limit(limit)
            ).all()
        events = [EventRow(int(r.id), r.ae_title, r.workitem_uid, bytes(r.message)) for r in rows]
        # A full page: continue after its last row, not after `top`.
        return events, (events[-1].id if len(events) == limit else top)

    def prune_events(self, older_than: float) -> int:
        def work(conn: Connection) -> int:
            return int(
                conn.execute(delete(_EVENT).where(_EVENT.c.created_at < older_than)).rowcount
            )

        return int(self.index._write(work))
