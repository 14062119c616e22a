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
- ``DELETE`` anywhere and everything under ``/admin`` need ``admin``.
- Static viewer files, when they land, get their own anonymous rule here; the viewer's
  DICOMweb calls stay under the rules above.
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


def default_rules(dicomweb_root: str) -> list[Rule]:
    root = re.escape(dicomweb_root)
    under_root = rf"^{root}(/.*)?$"
    return [
        _rule("GET HEAD", r"^/health$", ANONYMOUS),
        Rule(ANY_METHOD, re.compile(r"^/admin(/.*)?$"), ADMIN),
        _rule("DELETE", under_root, ADMIN),
        _rule("GET HEAD", under_root, READER),
        _rule("POST PUT", under_root, WRITER),
        _rule("GET HEAD", r"^/wado$", READER),
    ]


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
