"""The audit trail: who touched which patient data, from where, when, with what outcome.

Event identifiers and outcome indicators follow DICOM PS3.15 A.5 (audit messages,
codes from PS3.16 CID 400-403, coding scheme "DCM"); each record is one JSON line.
Any adapter records through ``AuditTrail.record(AuditEvent(...))``::

    audit.record(AuditEvent(QUERY, "E", OUTCOME_SUCCESS, user="ct1", user_kind="ae-title",
                            source_ip="10.0.0.7", query={"PatientID": "123"}))

Each record is one write to the file, opened with O_APPEND, so several worker processes
can share it. The file stays open (a viewer's every frame is a record); before each
record, the path is checked to still name it, so a log rotator may rename the file at
any time and the next record starts a new one.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import queue
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import orjson

from dicomweb_server.dicom.attributes import Level
from dicomweb_server.dicom.matching import parse_query
from dicomweb_server.errors import InvalidRequest
from dicomweb_server.services.query import QueryService

log = logging.getLogger(__name__)

# PS3.15 A.5.3 EventID (code, meaning), coding scheme DCM.
APPLICATION_ACTIVITY = ("110100", "Application Activity")
AUDIT_LOG_USED = ("110101", "Audit Log Used")
BEGIN_TRANSFERRING = ("110102", "Begin Transferring DICOM Instances")
INSTANCES_ACCESSED = ("110103", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = ("110104", "DICOM Instances Transferred")
STUDY_DELETED = ("110105", "DICOM Study Deleted")
QUERY = ("110112", "Query")
SECURITY_ALERT = ("110113", "Security Alert")
USER_AUTHENTICATION = ("110114", "User Authentication")
# EventTypeCode values (PS3.16 CID 401, 403).
LOGIN = ("110122", "Login")
USE_OF_RESTRICTED_FUNCTION = ("110132", "Use of Restricted Function")
# EventOutcomeIndicator (PS3.15 A.5.1, from RFC 3881).
OUTCOME_SUCCESS = 0
OUTCOME_MINOR_FAILURE = 4
OUTCOME_SERIOUS_FAILURE = 8
OUTCOME_MAJOR_FAILURE = 12


@dataclass
class AuditEvent:
    """One audit record. ``action`` is the EventActionCode: C, R, U, D or E."""

    event: tuple[str, str]
    action: str
    outcome: int
    user: str = "anonymous"
    user_kind: str = "anonymous"
    roles: list[str] = field(default_factory=list)
    source_ip: str | None = None
    method: str | None = None
    path: str | None = None
    status: int | None = None
    event_type: tuple[str, str] | None = None
    study_uids: list[str] = field(default_factory=list)
    series_uids: list[str] = field(default_factory=list)
    sop_instance_uids: list[str] = field(default_factory=list)
    patient_ids: list[str] = field(default_factory=list)
    query: dict[str, str] = field(default_factory=dict)
    detail: str = ""
    time: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat())

    def to_json(self) -> bytes:
        # A shallow copy: asdict's deep copy was most of the cost of auditing a request
        # (every frame a viewer fetches is one), and orjson reads the lists as they are.
        code, meaning = self.event
        data: dict[str, Any] = {
            "time": self.time,
            "event_id": {"code": code, "scheme": "DCM", "meaning": meaning},
        }
        for name in _PLAIN_FIELDS:
            value = getattr(self, name)
            if value is not None and value != "" and value != [] and value != {}:
                data[name] = value
        if self.event_type:
            kind, text = self.event_type
            data["event_type"] = {"code": kind, "scheme": "DCM", "meaning": text}
        return orjson.dumps(data)


# Written as they are, in declaration order, after time and event_id; empty ones left out.
_PLAIN_FIELDS = tuple(
    f.name for f in fields(AuditEvent) if f.name not in ("time", "event", "event_type")
)


class AuditSink(Protocol):
    def write(self, line: bytes) -> None: ...

    def close(self) -> None: ...


class JsonlFileSink:
    """Appends each record as one line; the folder is made on first use."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # records come from the event loop and threads
        self._fd: int | None = None
        self._held: tuple[int, int] | None = None  # (device, inode) of the open file
        self._closed = False

    def write(self, line: bytes) -> None:
        with self._lock:
            try:
                os.write(self._file(), line + b"\n")
            finally:
                if self._closed:  # a straggler at shutdown: written, nothing left open
                    self._release()

    def _file(self) -> int:
        # One stat per record (cheaper than the open and close it replaces): a file
        # renamed or removed by a rotator gets no record after that, so none is lost
        # with the rotated file when that is compressed and deleted at once.
        try:
            named = os.stat(self.path)
            if self._fd is not None and (named.st_dev, named.st_ino) == self._held:
                return self._fd
        except FileNotFoundError:
            pass
        self._release()
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        self._fd = os.open(self.path, flags, 0o600)
        held = os.fstat(self._fd)
        self._held = (held.st_dev, held.st_ino)
        return self._fd

    def _release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._release()


class SyslogSink:
    """RFC 5424 messages to an audit repository over UDP (RFC 5426) or TCP (RFC 6587
    octet counting), from a background thread so a slow repository never stalls a request."""

    FACILITY_SECURITY, SEVERITY_NOTICE = 10, 5

    def __init__(self, url: str, app_name: str = "dicomweb-server") -> None:
        scheme, _, rest = url.partition("://")
        host, _, port = rest.rpartition(":")
        self.scheme, self.address = scheme, (host, int(port))
        self.app_name, self.hostname = app_name, socket.gethostname() or "-"
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=10_000)
        self._sock: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, name="audit-syslog", daemon=True)
        self._thread.start()

    def _frame(self, line: bytes) -> bytes:
        pri = self.FACILITY_SECURITY * 8 + self.SEVERITY_NOTICE
        stamp = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        head = f"<{pri}>1 {stamp} {self.hostname} {self.app_name} {os.getpid()} AUDIT - "
        message = head.encode() + line
        return message if self.scheme == "udp" else b"%d " % len(message) + message

    def write(self, line: bytes) -> None:
        try:
            self._queue.put_nowait(self._frame(line))
        except queue.Full:
            log.error("audit syslog queue full; a record went to the file only")

    def _send(self, data: bytes) -> None:
        if self._sock is None:
            kind = socket.SOCK_DGRAM if self.scheme == "udp" else socket.SOCK_STREAM
            sock = socket.socket(socket.AF_INET, kind)
            sock.settimeout(5)
            if self.scheme == "tcp":
                sock.connect(self.address)
            self._sock = sock
        if self.scheme == "udp":
            self._sock.sendto(data, self.address)
        else:
            self._sock.sendall(data)

    def _run(self) -> None:
        while (data := self._queue.get()) is not None:
            try:
                self._send(data)
            except OSError as exc:
                log.error("audit syslog to %s:%d failed: %s", *self.address, exc)
                if self._sock is not None:
                    self._sock.close()
                    self._sock = None

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()


class AuditTrail:
    """Writes every event to each sink; a failing sink is logged, never raised to callers."""

    def __init__(self, sinks: list[AuditSink]) -> None:
        self.sinks = sinks

    def record(self, event: AuditEvent) -> None:
        line = event.to_json()
        for sink in self.sinks:
            try:
                sink.write(line)
            except OSError as exc:
                log.error("audit record not written by %s: %s", type(sink).__name__, exc)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


@dataclass
class AuditQuery:
    patient: str | None = None
    user: str | None = None
    since: str | None = None
    until: str | None = None
    limit: int = 100
    # Studies of ``patient`` known to the index, so retrievals by UID match too.
    patient_studies: frozenset[str] = frozenset()


def _lines(path: Path) -> Iterator[bytes]:
    """Lines of the rotated files (oldest first: .N ... .1), then of the current one."""
    rotated = sorted(
        (p for p in path.parent.glob(path.name + ".*") if p.suffix[1:].isdigit()),
        key=lambda p: -int(p.suffix[1:]),
    )
    for file in [*rotated, path]:
        try:
            with open(file, "rb") as fh:
                yield from fh
        except FileNotFoundError:
            continue


def _matches(record: dict[str, Any], q: AuditQuery) -> bool:
    stamp = str(record.get("time", ""))
    if q.since and stamp < q.since:
        return False
    if q.until and stamp > q.until:
        return False
    if q.user and record.get("user") != q.user:
        return False
    if q.patient:
        ids = record.get("patient_ids", [])
        query = record.get("query", {})
        studies = set(record.get("study_uids", []))
        if not (
            q.patient in ids
            or query.get("PatientID") == q.patient
            or query.get("00100020") == q.patient
            or studies & q.patient_studies
        ):
            return False
    return True


def search(path: Path, q: AuditQuery) -> list[dict[str, Any]]:
    """The newest ``limit`` records matching ``q``, oldest first. Times compare as ISO 8601
    text, so ``since``/``until`` may be a date (2026-01-31) or a full UTC time."""
    found: list[dict[str, Any]] = []
    for line in _lines(path):
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # a torn last line after a crash
        if isinstance(record, dict) and _matches(record, q):
            found.append(record)
            if len(found) > q.limit * 2:
                del found[: len(found) - q.limit]
    return found[-q.limit :] if q.limit else []


def studies_of_patient(query: QueryService, patient_id: str, limit: int = 10_000) -> frozenset[str]:
    """Study UIDs the index holds for ``patient_id`` (exact match; no wildcards)."""
    if any(c in patient_id for c in "*?\\\x00"):
        raise InvalidRequest("patient must be an exact Patient ID, without * ? or \\")
    request = parse_query(
        Level.STUDY, [("PatientID", patient_id)], default_limit=limit, max_limit=limit
    )
    results = query.search(request, "").results
    return frozenset(str(r["0020000D"]["Value"][0]) for r in results if "0020000D" in r)


def patient_of_study(query: QueryService, study: str) -> str | None:
    """The Patient ID of a stored study, for records that outlive it (deletions)."""
    request = parse_query(Level.STUDY, [("StudyInstanceUID", study)], default_limit=1)
    for result in query.search(request, "").results:
        values = result.get("00100020", {}).get("Value")
        if values:
            return str(values[0])
    return None


def _int(value: str | None, default: int, name: str) -> int:
    if value is None or value == "":
        return default
    if not value.isdigit():
        raise InvalidRequest(f"{name} must be a non-negative integer")
    return int(value)


def search_params(query: QueryService, path: Path, params: dict[str, str]) -> list[dict[str, Any]]:
    """Audit records by patient, user and time range, from text parameters (the admin
    endpoint and the CLI): a patient's records include accesses by UID to the studies
    the index holds for that Patient ID."""
    patient = params.get("patient") or None
    q = AuditQuery(
        patient=patient,
        user=params.get("user") or None,
        since=params.get("since") or None,
        until=params.get("until") or None,
        limit=min(_int(params.get("limit"), 100, "limit"), 10_000),
    )
    if patient:
        q.patient_studies = studies_of_patient(query, patient)
    return search(path, q)
