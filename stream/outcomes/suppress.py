"""Suppression rules: "this is fine" for the alerts a scope matches, with a reason, an
author and an expiry.

A rule matches an alert when every criterion it names holds: the tenant (none: every
tenant), the source or destination address (an address or a CIDR block), the
destination port (a port or a range), the protocol, the alert's leading explanation
feature, and any event field by its text (``--field service=backup``). Fields are read
as the sensor schema names them, as features are. A matched alert is not published (or
is, marked ``suppressed_by``, with ``--emit-suppressed``), adds no risk and joins no
incident; each match is counted per rule. An expired rule matches nothing.

Rules live on a compacted topic (``--suppression-topic``), one record per rule keyed
by its id (a tombstone removes it), written by ``stream suppress`` and followed by
every consumer (``stream.consumer.suppressions``). A rule that names no criterion at
all (every alert of its tenant, or of every tenant) is refused unless forced.

>>> rule = Rule.from_dict({"id": "nightly-backup", "tenant": "acme", "dst": "10.9.0.0/16",
...                        "port": "873", "reason": "rsync backup", "author": "ana"})
>>> rule.scope()
'tenant=acme dst=10.9.0.0/16 port=873'
>>> Rule.from_dict({"id": "x", "src": "10.0.0.0/33", "reason": "r", "author": "a"})
Traceback (most recent call last):
...
stream.outcomes.suppress.RuleError: rule x: src '10.0.0.0/33' is not an address or CIDR block
"""

from __future__ import annotations

import functools
import ipaddress
import math
import re
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from stream.errors import StreamError
from stream.features.columns import ColumnSource

__all__ = ["Rule", "RuleError", "RuleSet", "read_rules"]

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_TENANT: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: The canonical fields the scope criteria read (through the sensor schema's view).
SRC, DST, PORT, PROTO = "src_ip", "dst_ip", "dst_port", "protocol"
_MAX_TEXT: Final = 500


class RuleError(StreamError, ValueError):
    """A rule that cannot be used: the one line says which part and why."""


def _time(value: Any, what: str, rid: str) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if isinstance(value, str):
        try:
            t = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()
    raise RuleError(f"rule {rid}: {what} {value!r} is not an ISO 8601 time")


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat()


def _network(value: Any, what: str, rid: str) -> IpNetwork | None:
    if value is None or value == "":
        return None
    try:
        return ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        raise RuleError(f"rule {rid}: {what} {value!r} is not an address or CIDR block"
                        ) from None


def _ports(value: Any, rid: str) -> tuple[int, int] | None:
    if value is None or value == "":
        return None
    text = str(value).strip()
    lo, sep, hi = text.partition("-")
    try:
        a, b = int(lo), int(hi) if sep else int(lo)
    except ValueError:
        a, b = -1, -1
    if not 0 <= a <= b <= 65535:
        raise RuleError(f"rule {rid}: port {value!r} is not a port or a range (443, 8000-8100)")
    return a, b


@dataclass(frozen=True)
class Rule:
    """One suppression rule; see the module docstring."""

    id: str
    reason: str
    author: str
    tenant: str | None = None
    src: IpNetwork | None = None
    dst: IpNetwork | None = None
    port: tuple[int, int] | None = None
    proto: str | None = None
    feature: str | None = None
    fields: tuple[tuple[str, str], ...] = ()
    created: float = field(default_factory=time.time)
    expires: float | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Rule:
        """A rule from its record (what ``to_dict`` writes); ``RuleError`` if it is not one."""
        if not isinstance(d, Mapping):
            raise RuleError("a rule is a JSON object")
        rid = d.get("id")
        if not isinstance(rid, str) or not _ID.fullmatch(rid):
            raise RuleError(f"rule id {rid!r}: 1-64 letters, digits, '.', '_' or '-'")
        known = {"id", "reason", "author", "tenant", "src", "dst", "port", "proto", "feature",
                 "fields", "created", "expires"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise RuleError(f"rule {rid}: unknown members {unknown}")
        texts = {}
        for name in ("reason", "author", "tenant", "proto", "feature"):
            v = d.get(name)
            if v is not None and (not isinstance(v, str) or len(v) > _MAX_TEXT):
                raise RuleError(f"rule {rid}: {name} must be text (at most {_MAX_TEXT} chars)")
            texts[name] = v or None
        if not texts["reason"]:
            raise RuleError(f"rule {rid}: a reason is required (why this is fine)")
        if not texts["author"]:
            raise RuleError(f"rule {rid}: an author is required (who said it is fine)")
        tenant = texts["tenant"]
        if tenant is not None and not _TENANT.fullmatch(tenant):
            raise RuleError(f"rule {rid}: tenant {tenant!r} is not a tenant id")
        raw_fields = d.get("fields") or {}
        if not isinstance(raw_fields, Mapping) or not all(
                isinstance(k, str) and k and isinstance(v, str | int | float)
                and not isinstance(v, bool) for k, v in raw_fields.items()):
            raise RuleError(f"rule {rid}: fields must map field names to values")
        fields = tuple(sorted((k, v if isinstance(v, str) else format(v, ""))
                              for k, v in raw_fields.items()))
        return cls(
            id=rid, reason=str(texts["reason"]), author=str(texts["author"]), tenant=tenant,
            src=_network(d.get("src"), "src", rid), dst=_network(d.get("dst"), "dst", rid),
            port=_ports(d.get("port"), rid),
            proto=texts["proto"].lower() if texts["proto"] else None,
            feature=texts["feature"], fields=fields,
            # Whole microseconds: what its record's ISO 8601 time keeps.
            created=round(_time(d.get("created"), "created", rid) or time.time(), 6),
            expires=_time(d.get("expires"), "expires", rid),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "tenant": self.tenant}
        if self.src is not None:
            out["src"] = str(self.src)
        if self.dst is not None:
            out["dst"] = str(self.dst)
        if self.port is not None:
            lo, hi = self.port
            out["port"] = str(lo) if lo == hi else f"{lo}-{hi}"
        if self.proto is not None:
            out["proto"] = self.proto
        if self.feature is not None:
            out["feature"] = self.feature
        if self.fields:
            out["fields"] = dict(self.fields)
        out.update(reason=self.reason, author=self.author, created=_iso(self.created),
                   expires=_iso(self.expires))
        return out

    @property
    def matches_everything(self) -> bool:
        """No criterion beyond the tenant: every alert of its tenant (or of all)."""
        return (self.src is None and self.dst is None and self.port is None
                and self.proto is None and self.feature is None and not self.fields)

    def active(self, now: float) -> bool:
        return self.expires is None or now < self.expires

    def scope(self) -> str:
        """The criteria as one line (``tenant=acme dst=10.9.0.0/16 port=873``)."""
        d = self.to_dict()
        parts = [f"tenant={self.tenant or '*'}"]
        parts += [f"{k}={d[k]}" for k in ("src", "dst", "port", "proto", "feature") if k in d]
        parts += [f"{k}={v}" for k, v in self.fields]
        return " ".join(parts)


def _net(n: IpNetwork | None) -> tuple[int, int, int] | None:
    """(version, network as an int, mask as an int): a containment test in two int ops."""
    return None if n is None else (n.version, int(n.network_address), int(n.netmask))


class RuleSet:
    """The rules in force, by tenant; ``match`` finds the first rule each alert matches.

    It is handed the alerts' own columns (alerts are about 1% of events), reads each
    scope field once per alert and parses each address once per distinct text; each
    rule is checked as plain comparisons of ints and strings.
    """

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        self.rules: dict[str, Rule] = {r.id: r for r in rules}
        self._by_tenant: dict[str | None, list[Rule]] = {}
        for r in self.rules.values():
            self._by_tenant.setdefault(r.tenant, []).append(r)
        self._compiled = {r.id: (r.id, _net(r.src), _net(r.dst), r.port, r.proto, r.feature,
                                 r.fields) for r in self.rules.values()}

    def __len__(self) -> int:
        return len(self.rules)

    def match(self, tenants: Sequence[str], source: ColumnSource,
              leading: Sequence[str | None], now: float | None = None) -> dict[int, str]:
        """Row -> the id of the first active rule it matches, for the rows of ``source``
        (the alerts: their tenants and leading explanation features alongside)."""
        if not self.rules or source.n == 0:
            return {}
        now = time.time() if now is None else now
        everyone = [self._compiled[r.id] for r in self._by_tenant.get(None, ())
                    if r.active(now)]
        # A tenant's own rules in force, then everyone's: worked out once per tenant.
        in_force: dict[str, _Candidates] = {}
        # Addresses parsed as the covers parse them (one parser for both: a rule judged to
        # cover an episode matches each of its alerts), memoised across batches.
        ip = _ip_of

        def texts(path: str) -> list[str | None]:
            values, codes = source.strings(path)
            return [None if c else str(v) for v, c in zip(values.tolist(), codes.tolist(),
                                                          strict=True)]

        cols: dict[str, list[str | None]] = {}

        def col(path: str) -> list[str | None]:
            got = cols.get(path)
            if got is None:
                got = cols[path] = texts(path)
            return got

        out: dict[int, str] = {}
        for k in range(source.n):
            tenant = tenants[k]
            index = in_force.get(tenant)
            if index is None:
                index = in_force[tenant] = _Candidates([
                    *(self._compiled[r.id] for r in self._by_tenant.get(tenant, ())
                      if r.active(now)), *everyone])
            if index.empty:
                continue
            # The scope fields of a row with a rule to check, once.
            src, dst = ip(col(SRC)[k]), ip(col(DST)[k])
            p = col(PORT)[k]
            try:
                port = float(p) if p is not None else None
            except ValueError:
                port = None
            proto = (col(PROTO)[k] or "").lower()
            def value(f: str, k: int = k) -> str | None:
                return col(f)[k]

            for rid, rsrc, rdst, rport, rproto, rfeature, rfields in index.for_row(port, value):
                if rsrc is not None and (src is None or src[0] != rsrc[0]
                                         or src[1] & rsrc[2] != rsrc[1]):
                    continue
                if rdst is not None and (dst is None or dst[0] != rdst[0]
                                         or dst[1] & rdst[2] != rdst[1]):
                    continue
                if rport is not None and (port is None or not rport[0] <= port <= rport[1]):
                    continue
                if rproto is not None and proto != rproto:
                    continue
                if rfeature is not None and leading[k] != rfeature:
                    continue
                if rfields and any(col(f)[k] != v for f, v in rfields):
                    continue
                out[k] = rid
                break
        return out


class _Candidates:
    """A tenant's rules in force, in order, indexed so that a row is checked only against
    the rules it can match: a rule on one port is looked up by the row's port, a rule on
    fields by the row's value of its first field; the rest are checked for every row.
    What a row gets back is in the rules' order, so the first match is the same as a
    scan of them all would find (``tests/unit/outcomes/test_suppress.py``)."""

    __slots__ = ("always", "by_field", "by_port", "empty", "fields")

    def __init__(self, compiled: list[Any]) -> None:
        self.always: list[tuple[int, Any]] = []
        self.by_port: dict[float, list[tuple[int, Any]]] = {}
        self.by_field: dict[tuple[str, str], list[tuple[int, Any]]] = {}
        for n, c in enumerate(compiled):
            rport, rfields = c[3], c[6]
            if rport is not None and rport[0] == rport[1]:
                self.by_port.setdefault(rport[0], []).append((n, c))
            elif rfields:
                self.by_field.setdefault(rfields[0], []).append((n, c))
            else:
                self.always.append((n, c))
        self.fields = sorted({f for f, _v in self.by_field})
        self.empty = not compiled

    def for_row(self, port: float | None, value: Callable[[str], str | None]) -> list[Any]:
        got = self.always
        extra: list[tuple[int, Any]] = []
        if port is not None and self.by_port:
            extra += self.by_port.get(port, ())
        for f in self.fields:
            v = value(f)
            if v is not None:  # an unset field matches no rule on it
                extra += self.by_field.get((f, v), ())
        if extra:
            got = sorted([*got, *extra], key=_first)
        return [c for _n, c in got]


def _first(pair: tuple[int, Any]) -> int:
    return pair[0]


#: What incidents and entity episodes keep of their alerts, so that a rule added later
#: can tell whether it covers every one of them (``covering``). A rule is a conjunction
#: of one test per field, each a range (a CIDR block, a port range) or one value (the
#: protocol, the leading feature): it matches every alert exactly when each field's
#: values all pass, which the field's lowest and highest value (or its one value) tell.
#: So per field: ``[version, lowest, highest]`` of the addresses (an IPv6 one as decimal
#: text: it does not fit JSON's integers), ``[lowest, highest]`` of the ports, ``[value]`` of the
#: protocol and the leading feature, and ``"x"`` once a value is unset, unreadable or a
#: second one (no rule on that field can cover them all then).
_MANY: Final = "x"


def cover_add(cover: dict[str, Any], summary: Mapping[str, str], lead: str | None) -> None:
    """Fold one alert (its scope fields as text, its leading feature) into ``cover``; a
    cover that is not one (a tampered changelog note) becomes "covers nothing known"."""
    try:
        _cover_add(cover, summary, lead)
    except (ValueError, TypeError, IndexError, KeyError):
        cover.update({f: _MANY for f in (SRC, DST, PORT, PROTO, "lead")})


@functools.lru_cache(maxsize=65536)
def _ip_of(text: str | None) -> tuple[int, int] | None:
    """(version, address as an int) of an address's text; None if it is not one. The
    socket module's parser, strict and a tenth of ``ipaddress``'s cost, memoised."""
    if not text:
        return None
    if "%" in text:  # an IPv6 zone ("fe80::1%eth0"): the address is what rules test
        text = text.split("%", 1)[0]
    for family, version in ((socket.AF_INET, 4), (socket.AF_INET6, 6)):
        try:
            return version, int.from_bytes(socket.inet_pton(family, text), "big")
        except (OSError, ValueError):
            continue
    return None


def _cover_add(cover: dict[str, Any], summary: Mapping[str, str], lead: str | None) -> None:
    for f in (SRC, DST):
        cur = cover.get(f)
        if cur == _MANY:
            continue
        got = _ip_of(summary.get(f))
        if got is None:
            cover[f] = _MANY
            continue
        version, n = got
        v: Any = n if version == 4 else str(n)  # IPv6 does not fit JSON's integers
        if cur is None:
            cover[f] = [version, v, v]
        elif cur[0] != version:
            cover[f] = _MANY
        elif n < int(cur[1]):
            cur[1] = v
        elif n > int(cur[2]):
            cur[2] = v
    cur = cover.get(PORT)
    if cur != _MANY:
        try:
            p = float(summary.get(PORT, ""))
            cover[PORT] = [p, p] if cur is None else [min(cur[0], p), max(cur[1], p)]
        except ValueError:
            cover[PORT] = _MANY
    for f, v in ((PROTO, (summary.get(PROTO) or "").lower()), ("lead", lead)):
        cur = cover.get(f)
        if cur is None:
            cover[f] = [v]
        elif cur != _MANY and cur[0] != v:
            cover[f] = _MANY


def _covers(rule: Rule, tenant: str, cover: Mapping[str, Any], now: float) -> bool:
    if not rule.active(now) or (rule.tenant is not None and rule.tenant != tenant):
        return False
    if rule.fields or not cover:
        return False  # a field no cover keeps: never judged covered
    for f, net in ((SRC, rule.src), (DST, rule.dst)):
        if net is None:
            continue
        cur = cover.get(f)
        if not isinstance(cur, list) or cur[0] != net.version:
            return False
        first, last = int(net.network_address), int(net.broadcast_address)
        if not (first <= int(cur[1]) and int(cur[2]) <= last):
            return False
    if rule.port is not None:
        cur = cover.get(PORT)
        if not isinstance(cur, list) or not (rule.port[0] <= cur[0] and cur[1] <= rule.port[1]):
            return False
    for f, want in ((PROTO, rule.proto), ("lead", rule.feature)):
        if want is not None:
            cur = cover.get(f)
            if not isinstance(cur, list) or cur[0] != want:
                return False
    return True


def covering(rules: RuleSet, tenant: str, cover: Mapping[str, Any],
             now: float | None = None) -> str | None:
    """The id of the first rule of ``rules`` in force that matches every alert ``cover``
    describes (an incident's or an episode's, of ``tenant``); None if none does."""
    now = time.time() if now is None else now
    for rule in rules.rules.values():
        try:
            if _covers(rule, tenant, cover, now):
                return rule.id
        except (ValueError, TypeError, IndexError, KeyError, AttributeError):
            return None  # not a cover (a tampered changelog note): judged not covered
    return None


def read_rules(lines: Iterable[bytes | str], source: str = "rules") -> RuleSet:
    """Rules from JSON lines (what ``stream suppress list --json`` prints; its ``active``
    member is left aside); ``RuleError`` naming the line of the first that is no rule."""
    import orjson

    rules = []
    for k, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            doc = orjson.loads(line)
            if isinstance(doc, dict):
                doc.pop("active", None)
            rules.append(Rule.from_dict(doc))
        except (orjson.JSONDecodeError, RuleError) as e:
            raise RuleError(f"{source}, line {k}: {e}") from None
    return RuleSet(rules)
