"""Known remote AEs ("modalities") and the outbound DIMSE operations on them.

Remote AEs come from two places: the configuration (``dimse_modalities``, read-only
at run time) and the index (managed through ``/admin/modalities``, so an operator adds
a modality without a restart). A configured AE title wins over a stored one.

The network itself is a small Protocol (``DicomNetwork``), implemented with pynetdicom
by ``dimse/scu.py`` and wired in by ``bootstrap``: services never import the adapter.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from dicomweb_server.config import Settings
from dicomweb_server.errors import Conflict, InvalidRequest, NotFound
from dicomweb_server.storage.interfaces import StoredInstance as StoredInstance

OPERATIONS = ("echo", "store", "find", "move", "get", "commit", "mpps")
_SPEC_RE = re.compile(r"^(?P<aet>[^@]{1,16})@(?P<host>[^:/]+):(?P<port>[0-9]{1,5})(/(?P<ops>.*))?$")


@dataclass(frozen=True)
class Modality:
    """A remote Application Entity (PS3.7 / PS3.8: AE title, TCP host and port)."""

    ae_title: str
    host: str
    port: int
    operations: frozenset[str] = frozenset(OPERATIONS)
    # Peer addresses the AE may call from; empty means any.
    allowed_ips: tuple[str, ...] = ()
    configured: bool = False

    def allows(self, operation: str, peer_ip: str | None = None) -> bool:
        if operation not in self.operations:
            return False
        return not self.allowed_ips or peer_ip in self.allowed_ips

    def as_row(self) -> dict[str, Any]:
        return {
            "ae_title": self.ae_title,
            "host": self.host,
            "port": self.port,
            "operations": sorted(self.operations),
            "allowed_ips": list(self.allowed_ips),
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Modality:
        return cls(
            row["ae_title"],
            row["host"],
            int(row["port"]),
            frozenset(row["operations"]),
            tuple(row["allowed_ips"]),
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "aet": self.ae_title,
            "host": self.host,
            "port": self.port,
            "operations": sorted(self.operations),
            "allowed_ips": list(self.allowed_ips),
            "source": "config" if self.configured else "index",
        }


def check_ae_title(value: object) -> str:
    """PS3.5 6.2 AE: 1 to 16 characters, no backslash or control characters."""
    if not isinstance(value, str) or not 1 <= len(value.strip()) <= 16:
        raise InvalidRequest("an AE title must be 1 to 16 characters")
    if "\\" in value or any(ord(c) < 0x20 or ord(c) > 0x7E for c in value):
        raise InvalidRequest(f"AE title {value!r}: only printable ASCII without '\\'")
    return value.strip()


def modality_from_json(ae_title: str, body: object) -> Modality:
    """Validate an ``/admin/modalities/{aet}`` body: {"host", "port", "operations"?, ...}."""
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    unknown = set(body) - {"aet", "host", "port", "operations", "allowed_ips"}
    if unknown:
        raise InvalidRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
    aet = check_ae_title(ae_title)
    if "aet" in body and body["aet"] != aet:
        raise InvalidRequest("the body's aet differs from the one in the path")
    host, port = body.get("host"), body.get("port")
    if not isinstance(host, str) or not host or len(host) > 255 or any(c in host for c in " /"):
        raise InvalidRequest("host must be a host name or IP address")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InvalidRequest("port must be an integer from 1 to 65535")
    ops = body.get("operations", list(OPERATIONS))
    if not isinstance(ops, list) or not all(isinstance(o, str) for o in ops):
        raise InvalidRequest("operations must be a list of strings")
    bad = set(ops) - set(OPERATIONS)
    if bad:
        raise InvalidRequest(f"unknown operation(s) {sorted(bad)}; known: {list(OPERATIONS)}")
    ips = body.get("allowed_ips", [])
    if not isinstance(ips, list) or not all(isinstance(i, str) for i in ips):
        raise InvalidRequest("allowed_ips must be a list of IP addresses")
    for ip in ips:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise InvalidRequest(f"allowed_ips: {ip!r} is not an IP address") from None
    return Modality(aet, host, port, frozenset(ops), tuple(ips))


def parse_modality(spec: str) -> Modality:
    """A configured AE: ``AET@host:port`` or ``AET@host:port/echo+store+...``."""
    match = _SPEC_RE.match(spec.strip())
    if match is None:
        raise ValueError(f"dimse_modalities: {spec!r} is not of the form AET@host:port[/ops]")
    ops = match.group("ops")
    body: dict[str, Any] = {"host": match.group("host"), "port": int(match.group("port"))}
    if ops:
        body["operations"] = [o.strip() for o in ops.split("+") if o.strip()]
    try:
        found = modality_from_json(match.group("aet"), body)
    except InvalidRequest as exc:
        raise ValueError(f"dimse_modalities: {spec!r}: {exc.message}") from None
    return Modality(found.ae_title, found.host, found.port, found.operations, configured=True)


class ModalityStore(Protocol):
    """Persisted remote AEs (the index's ``remote_ae`` table, schema v4), as plain
    dicts with the keys ae_title, host, port, operations, allowed_ips."""

    def list_modalities(self) -> list[dict[str, Any]]: ...

    def get_modality(self, ae_title: str) -> dict[str, Any] | None: ...

    def put_modality(self, modality: dict[str, Any]) -> bool:
        """Insert or replace; True when it was new."""
        ...

    def delete_modality(self, ae_title: str) -> bool: ...


@dataclass
class RemoteResult:
    """What an outbound operation did: DIMSE status and, for queries, the matches."""

    status: int
    matches: list[dict[str, Any]] = field(default_factory=list)
    completed: int = 0
    failed: int = 0
    warning: int = 0
    message: str = ""

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": f"0x{self.status:04X}"}
        if self.message:
            out["message"] = self.message
        out.update(completed=self.completed, failed=self.failed, warning=self.warning)
        return out


class DicomNetwork(Protocol):
    """Outbound DIMSE (implemented by dimse/scu.py)."""

    def echo(self, target: Modality) -> RemoteResult: ...

    def send(self, target: Modality, instances: Iterable[StoredInstance]) -> RemoteResult: ...

    def find(self, target: Modality, level: str, keys: dict[str, str]) -> RemoteResult: ...

    def move(self, target: Modality, level: str, keys: dict[str, str]) -> RemoteResult:
        """C-MOVE from ``target`` to ourselves (our AE title)."""
        ...


class ModalityService:
    def __init__(
        self, settings: Settings, store: ModalityStore, network: DicomNetwork | None = None
    ) -> None:
        self.settings = settings
        self.store = store
        self.network = network
        self.configured = {m.ae_title: m for m in map(parse_modality, settings.dimse_modalities)}

    def all(self) -> list[Modality]:
        stored = {r["ae_title"]: Modality.from_row(r) for r in self.store.list_modalities()}
        stored.update(self.configured)
        return [stored[k] for k in sorted(stored)]

    def find(self, ae_title: str) -> Modality | None:
        """The known AE with this title; None for an unknown or malformed title (a
        calling AE title comes from the network: it never reaches the index unchecked)."""
        try:
            aet = check_ae_title(ae_title)
        except InvalidRequest:
            return None
        if aet in self.configured:
            return self.configured[aet]
        row = self.store.get_modality(aet)
        return None if row is None else Modality.from_row(row)

    def get(self, ae_title: str) -> Modality:
        found = self.find(check_ae_title(ae_title))
        if found is None:
            raise NotFound(f"no known modality with AE title {ae_title!r}")
        return found

    def put(self, ae_title: str, body: object) -> tuple[Modality, bool]:
        modality = modality_from_json(ae_title, body)
        if modality.ae_title in self.configured:
            raise Conflict(f"{modality.ae_title} is set in the configuration file; edit it there")
        return modality, self.store.put_modality(modality.as_row())

    def delete(self, ae_title: str) -> None:
        aet = check_ae_title(ae_title)
        if aet in self.configured:
            raise Conflict(f"{aet} is set in the configuration file; edit it there")
        if not self.store.delete_modality(aet):
            raise NotFound(f"no stored modality with AE title {aet!r}")

    def _network(self) -> DicomNetwork:
        if self.network is None:
            raise Conflict("outbound DIMSE is not available in this process")
        return self.network

    def echo(self, ae_title: str) -> RemoteResult:
        return self._network().echo(self.get(ae_title))

    def send(self, ae_title: str, instances: Iterator[StoredInstance]) -> RemoteResult:
        return self._network().send(self.get(ae_title), instances)

    def query(self, ae_title: str, level: str, keys: dict[str, str]) -> RemoteResult:
        return self._network().find(self.get(ae_title), _level(level), keys)

    def retrieve(self, ae_title: str, level: str, keys: dict[str, str]) -> RemoteResult:
        return self._network().move(self.get(ae_title), _level(level), keys)


def _level(level: str) -> str:
    upper = level.upper()
    if upper not in ("PATIENT", "STUDY", "SERIES", "IMAGE"):
        raise InvalidRequest("level must be PATIENT, STUDY, SERIES or IMAGE")
    return upper
