"""Which role each request needs: one table for every route, default deny.

The rules are matched against the request's method and its (decoded) path, the same
string Starlette routes on, so no route can be reached by a path the policy reads
differently. A request no rule matches needs ``DENY``, which no one has: a route added
later is closed until a rule opens it.

Roles are ordered: admin implies writer implies reader. With authentication off
(allowed on loopback only) the table is not enforced.

- ``/health`` is anonymous: it tells only whether the index answers, the version and a
  count of instances, no patient data (load balancers probe it without credentials).
- Reading under the DICOMweb root and WADO-URI (``/wado``) needs ``reader``.
- ``POST``/``PUT`` under the root (STOW-RS; UPS-RS create, update, state) need ``writer``.
- ``DELETE`` anywhere and everything under ``/admin`` need ``admin``, except UPS-RS
  Unsubscribe (``DELETE {root}/workitems/{uid}/subscribers/{aetitle}``), which needs
  ``writer`` like Subscribe. The event channel WebSocket is checked as a ``GET``.
- ``/open`` (deep links) is anonymous: without the ``reader`` role it answers a
  redirect that does not depend on what is stored (the viewer then signs in).
- With the viewer on, any other ``GET``/``HEAD`` is the viewer's (its catch-all route)
  and anonymous: OHIF's static shell; its DICOMweb calls stay under the rules above.
  A new non-viewer GET route outside the root must get its own rule before it (the
  route-enumeration test fails until it does).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ANONYMOUS = "anonymous"
READER, WRITER, ADMIN = "reader", "writer", "admin"
DENY = "deny"
ANY_METHOD: frozenset[str] = frozenset()
_RANK = {READER: 1, WRITER: 2, ADMIN: 3}


@dataclass(frozen=True)
class Rule:
    methods: frozenset[str]  # empty: every method
    pattern: re.Pattern[str]
    role: str


def _rule(methods: str, pattern: str, role: str) -> Rule:
    return Rule(frozenset(methods.split()), re.compile(pattern), role)


def default_rules(dicomweb_root: str, viewer: bool = False) -> list[Rule]:
    root = re.escape(dicomweb_root)
    under_root = rf"^{root}(/.*)?$"
    rules = [
        _rule("GET HEAD", r"^/health$", ANONYMOUS),
        Rule(ANY_METHOD, re.compile(r"^/admin(/.*)?$"), ADMIN),
        # UPS-RS Unsubscribe: whoever may subscribe (writer) may unsubscribe.
        _rule("DELETE", rf"^{root}/workitems/[^/]+/subscribers/[^/]+$", WRITER),
        _rule("DELETE", under_root, ADMIN),
        _rule("GET HEAD", under_root, READER),
        _rule("POST PUT", under_root, WRITER),
        _rule("GET HEAD", r"^/wado$", READER),
        # Deep links from an HIS: a browser opens them without a token. The handler
        # looks studies up only for a reader; anyone else gets the same redirect
        # whatever exists (web/open_link.py), so the answer tells nothing.
        _rule("GET HEAD", r"^/open$", ANONYMOUS),
    ]
    if viewer:
        # Last: OHIF's shell (HTML, scripts, wasm, and its client-side routes, which the
        # viewer's catch-all answers) holds no patient data and must load before anyone
        # can sign in; every DICOMweb call it makes meets the rules above. Other methods
        # on unknown paths stay denied.
        rules.append(_rule("GET HEAD", r"^/.*$", ANONYMOUS))
    return rules


def required_role(rules: list[Rule], method: str, path: str) -> str:
    for rule in rules:
        if (not rule.methods or method in rule.methods) and rule.pattern.match(path):
            return rule.role
    return DENY


def allows(roles: frozenset[str], required: str) -> bool:
    """Whether someone holding ``roles`` may do what needs ``required``."""
    if required == ANONYMOUS:
        return True
    if required not in _RANK:
        return False
    return max((_RANK.get(r, 0) for r in roles), default=0) >= _RANK[required]
