"""The feature spec stored with a model: named expressions, what they learned, how to compute them.

A :class:`FeatureSpec` is the one definition of a model's inputs. Training
fits it (learning one-hot categories and frequency tables), stores it with the
model via :meth:`FeatureSpec.to_dict`, and every scorer (offline, the stream)
rebuilds it with :meth:`FeatureSpec.from_dict` and calls :meth:`FeatureSpec.compute`
on its own :class:`~stream.features.columns.ColumnSource`. There is no second
implementation to drift, so train/serve parity holds by construction.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from stream.features.columns import ColumnSource
from stream.features.expr import (
    Apply,
    Compiled,
    EvalContext,
    Ref,
    SpecError,
    compile_expr,
    tail_of,
)
from stream.outcomes.reasons import BAD_TIMESTAMP, MISSING_FEATURE, OK, REASONS

VERSION: Final = 1
#: Where window functions read event time unless the spec says otherwise.
DEFAULT_TIMESTAMP_FIELD: Final = "timestamp"
NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_FIELD_TOKEN: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")
# Reject details name at most this many fields (bit positions in one int64 key).
_MAX_BLAMED: Final = 62


@dataclass(frozen=True)
class Computed:
    """The model inputs for a batch.

    ``X``: float64, shape (n, len(spec.columns)), C-contiguous. ``reason``:
    uint8 per row, 0 when usable, else the first reason over the features in
    spec order; ``detail`` explains each rejected row. Rejected rows hold
    arbitrary values in ``X``: callers drop them.
    """

    X: np.ndarray
    reason: np.ndarray
    detail: dict[int, str]
    late: int = 0  # rows older than the lateness allows: scored, not applied to windows
    late_rows: np.ndarray | None = None  # which rows those are

    @property
    def ok(self) -> np.ndarray:
        """Boolean mask of the usable rows."""
        return self.reason == OK


@dataclass(frozen=True)
class _Feature:
    name: str
    compiled: Compiled
    learned: tuple[dict[str, Any], ...]  # one state per fitting call, or () when not fitted
    prepared: tuple[Any, ...]  # what each fitting call evaluates with (None: not fitted)

    @classmethod
    def make(
        cls, name: str, compiled: Compiled, learned: Sequence[dict[str, Any]] = ()
    ) -> _Feature:
        calls = compiled.fitted
        states: list[dict[str, Any] | None] = list(learned) if learned else [None] * len(calls)
        prepared = tuple(a.fn.prepare(a, s) for a, s in zip(calls, states, strict=True))
        return cls(name, compiled, tuple(learned), prepared)

    def unfitted(self) -> Apply | None:
        """The first call that must be fitted before compute, if any is not."""
        for a, p in zip(self.compiled.fitted, self.prepared, strict=True):
            if p is None and a.fn.needs_fit(a):
                return a
        return None

    def columns(self) -> tuple[str, ...] | None:
        root = self.compiled.root
        if not self.compiled.multi:
            return (self.name,)
        assert isinstance(root, Apply) and root.slot is not None
        prepared = self.prepared[root.slot]
        if prepared is None:
            return None
        return tuple(f"{self.name}={s}" for s in root.fn.outputs(root, prepared))


def _not_fitted(feature: _Feature, apply: Apply) -> SpecError:
    text = apply.node.source(feature.compiled.text)
    return SpecError(
        f"{text} learns from training data: fit the spec first",
        feature=feature.name,
        position=apply.node.pos,
    )


class FeatureSpec:
    """An ordered set of named feature expressions, optionally fitted. Immutable.

    Build one with :meth:`parse`, :meth:`from_fields`, :meth:`from_cli`,
    :meth:`from_file` or :meth:`from_dict`; :meth:`fit` returns a new, fitted spec.
    """

    def __init__(
        self,
        features: Sequence[_Feature],
        fitted_records: int | None = None,
        timestamp_field: str = DEFAULT_TIMESTAMP_FIELD,
    ) -> None:
        # Private: use the constructors above, which check names and expressions.
        self._features = tuple(features)
        self._fitted_records = fitted_records
        self.timestamp_field = timestamp_field
        cols = [f.columns() for f in self._features]
        self._columns = (None if any(c is None for c in cols)
                         else tuple(name for c in cols for name in c or ()))
        self._widths = [0 if c is None else len(c) for c in cols]

    # ---- constructors ------------------------------------------------------------------

    @classmethod
    def parse(cls, items: Sequence[tuple[str, str]]) -> FeatureSpec:
        """A spec from (name, expression) pairs, in order."""
        return cls._build(items)

    @classmethod
    def _build(
        cls,
        items: Sequence[Any],
        learned: Sequence[Sequence[dict[str, Any]]] | None = None,
        fitted_records: int | None = None,
        timestamp_field: str = DEFAULT_TIMESTAMP_FIELD,
    ) -> FeatureSpec:
        if not isinstance(timestamp_field, str) or not timestamp_field:
            raise SpecError(f"the timestamp field must be a field name, got {timestamp_field!r}")
        items = list(items)
        if not items:
            raise SpecError("a feature spec needs at least one feature")
        features: list[_Feature] = []
        seen: set[str] = set()
        for i, item in enumerate(items):
            try:
                name, text = item
            except (TypeError, ValueError):
                raise SpecError(
                    f"feature #{i + 1}: expected a (name, expression) pair, got {item!r}"
                ) from None
            if not isinstance(name, str) or not NAME_RE.fullmatch(name):
                raise SpecError(
                    f"feature #{i + 1}: invalid name {name!r}: want [A-Za-z_][A-Za-z0-9_.]*"
                )
            if name in seen:
                raise SpecError("duplicate feature name", feature=name)
            seen.add(name)
            if not isinstance(text, str):
                raise SpecError(
                    f"the expression must be a string, got {type(text).__name__}", feature=name
                )
            try:
                compiled = compile_expr(text)
                states = learned[i] if learned is not None else ()
                if states:
                    _check_learned(compiled, states)
                features.append(_Feature.make(name, compiled, states))
            except SpecError as e:
                raise e.for_feature(name) from None
        return cls(features, fitted_records, timestamp_field)

    @classmethod
    def from_fields(cls, fields: Sequence[str]) -> FeatureSpec:
        """Plain features, one per raw field, named after it (today's models).

        A plain feature reads its field as a number: unset, null, non-numeric or
        non-finite values reject the row exactly as the stream decoder does.
        """
        items = []
        for f in fields:
            # Names the grammar cannot read bare (e.g. "a..b") are backquoted.
            items.append((f, f if _FIELD_TOKEN.fullmatch(f) else f"`{f}`"))
        return cls._build(items)

    @classmethod
    def from_cli(cls, features: Sequence[str]) -> FeatureSpec:
        """A spec from ``NAME=EXPR`` strings (split at the first "=")."""
        items = []
        for item in features:
            name, sep, text = item.partition("=")
            if not sep:
                raise SpecError(f"expected NAME=EXPR, got {item!r}")
            items.append((name.strip(), text.strip()))
        return cls._build(items)

    @classmethod
    def from_file(cls, path: str | Path) -> FeatureSpec:
        """A spec from a YAML file: ``features:`` as a list of ``{name, expr}`` or a mapping.

        ::

            features:
              - name: ld
                expr: "log(duration + 0.1)"
            # or
            features:
              ld: "log(duration + 0.1)"
        """
        import yaml  # installed with mlflow; imported here so the package has no hard need

        where = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise SpecError(f"cannot read feature spec: {e}", source=where) from None
        try:
            doc = yaml.load(text, Loader=_loader())  # a SafeLoader: no Python objects
        except yaml.YAMLError as e:
            raise SpecError(f"invalid YAML: {e}", source=where) from None
        try:
            items = _items_from_yaml(doc)
            return cls._build(items, timestamp_field=doc.get("timestamp_field", "timestamp"))
        except SpecError as e:
            raise e.from_source(where) from None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureSpec:
        """The spec :meth:`to_dict` produced (as stored with a model)."""
        if not isinstance(d, Mapping):
            raise SpecError(f"a stored feature spec must be an object, got {type(d).__name__}")
        if d.get("version") != VERSION:
            raise SpecError(
                f"unsupported feature spec version {d.get('version')!r} (this code reads {VERSION})"
            )
        feats = d.get("features")
        if not isinstance(feats, list):
            raise SpecError("a stored feature spec needs a 'features' list")
        items, learned = [], []
        for i, f in enumerate(feats):
            if not isinstance(f, Mapping) or "name" not in f or "expr" not in f:
                raise SpecError(f"stored feature #{i + 1}: want an object with 'name' and 'expr'")
            items.append((f["name"], f["expr"]))
            states = f.get("learned", [])
            if not isinstance(states, list):
                raise SpecError("'learned' must be a list", feature=str(f["name"]))
            learned.append(states)
        fitted = d.get("fitted_records")
        if fitted is not None and (type(fitted) is not int or fitted < 0):
            raise SpecError(f"'fitted_records' must be a count, got {fitted!r}")
        return cls._build(
            items, learned, fitted, d.get("timestamp_field", DEFAULT_TIMESTAMP_FIELD)
        )

    # ---- fitting and computing ---------------------------------------------------------

    def fit(self, source: ColumnSource) -> FeatureSpec:
        """A new spec, fitted on ``source`` (the training records); this one is unchanged.

        Learns one-hot categories and frequency tables from the records where
        each field has a usable value (rows another feature rejects still
        count); a frequency table keeps the 100,000 most frequent values
        (``expr.FREQ_TABLE_MAX``). Fitting a fitted spec learns afresh. A
        field that is absent from every training record is a SpecError: almost
        always a misspelt name or a sensor that does not send it (unless every read
        of it is ``optional(field, value)``: a field some sensors do not have).
        """
        ctx = EvalContext(source)
        if ctx.n == 0:
            raise SpecError("cannot fit a feature spec on zero training records")
        features = []
        with np.errstate(all="ignore"):
            for f in self._features:
                for (path, kind), pos in f.compiled.fields.items():
                    if path in f.compiled.optional:
                        continue
                    if (ctx.raw_codes(path, kind) == MISSING_FEATURE).all():
                        raise SpecError(
                            f"field {path!r} is absent from every training record",
                            feature=f.name,
                            position=pos,
                        )
                try:
                    states = [a.fn.fit(a, a.evaluated_args(ctx), ctx) for a in f.compiled.fitted]
                except SpecError as e:
                    raise e.for_feature(f.name) from None
                features.append(_Feature.make(f.name, f.compiled, states))
        return FeatureSpec(features, ctx.n, self.timestamp_field)

    def with_timestamp_field(self, name: str) -> FeatureSpec:
        """The same spec reading event time from ``name`` (``--timestamp-field``)."""
        d = self.to_dict()
        d["timestamp_field"] = name
        return FeatureSpec.from_dict(d)

    @property
    def leaves_own_out(self) -> bool:
        """True when ``compute(training=True)`` differs from ``compute()``: some counted
        table (``freq``, ``rarity``) leaves a training record's own count out."""
        return any(getattr(a.fn, "counts", False) for f in self._features
                   for a in f.compiled.fitted)

    @property
    def windowed(self) -> bool:
        """True when some feature is a window function (it needs event times and state)."""
        return any(f.compiled.windows for f in self._features)

    @property
    def window_signatures(self) -> tuple[str, ...]:
        """The state identity of each window function, in spec order."""
        from stream.features.windows import signature

        return tuple(signature(a) for f in self._features for a in f.compiled.windows)

    def _run(
        self,
        source: ColumnSource,
        store: Any = None,
        scopes: np.ndarray | None = None,
        tenants: Sequence[Any] | None = None,
        dry: bool = False,
    ) -> Any:
        from stream.state.store import WindowRun, WindowStore

        return WindowRun(
            source,
            self.timestamp_field,
            store if store is not None else WindowStore(),
            scopes=scopes,
            tenants=tenants,
            dry=dry,
        )

    def compute(
        self,
        source: ColumnSource,
        *,
        store: Any = None,
        scopes: np.ndarray | None = None,
        tenants: Sequence[Any] | None = None,
        dry: bool = False,
        training: bool = False,
    ) -> Computed:
        """The model inputs for every row of ``source``, vectorized per feature.

        Window functions (if any) read and update ``store``
        (a :class:`~stream.state.store.WindowStore`; a fresh one when None, so
        a whole file computes its windows in one call), per ``scopes`` (one int per
        row, default 0) and per tenant (``tenants``, one per row, default none);
        rows must come in event order. ``dry`` reads the state without changing it.
        ``training``: ``source`` is the records this spec was fitted on; counted tables
        (``freq``, ``rarity``) leave each record's own count out of its value, so the
        detector learns how often traffic brings a value nobody else had.
        """
        for f in self._features:
            missing = f.unfitted()
            if missing is not None:
                raise _not_fitted(f, missing)
        ctx = EvalContext(source)
        ctx.leave_own_out = training
        if self.windowed:
            ctx.windows = self._run(source, store, scopes, tenants, dry)
        n = ctx.n
        X = np.empty((n, len(self.columns)), dtype=np.float64)
        reason = np.zeros(n, dtype=np.uint8)
        rejected: list[tuple[_Feature, np.ndarray]] = []
        j = 0
        with np.errstate(all="ignore"):
            for f, width in zip(self._features, self._widths, strict=True):
                ctx.learned = f.prepared
                col = f.compiled.root.eval(ctx)
                if width == 1 and np.ndim(col.values) < 2:
                    X[:, j] = col.values
                elif width == 1:  # a one-hot whose only column is "other"
                    X[:, j] = col.values[:, 0]
                else:
                    X[:, j : j + width] = col.values
                j += width
                codes = col.codes
                if codes is not None and codes.any():
                    # First reason in spec order wins: only rows still usable take this one.
                    new = (codes != OK) & (reason == OK)
                    if new.any():
                        reason[new] = codes[new]
                        rejected.append((f, np.flatnonzero(new)))
            detail = self._details(ctx, rejected, reason)
        if ctx.windows is None:
            return Computed(X, reason, detail)
        return Computed(X, reason, detail, ctx.windows.late, ctx.windows.late_rows)

    def _details(
        self, ctx: EvalContext, rejected: list[tuple[_Feature, np.ndarray]], reason: np.ndarray
    ) -> dict[int, str]:
        """``feature 'ld': missing_feature (duration)`` for each rejected row.

        Fields are named when the row's reason comes from them: for a missing
        value, the absent fields that reach the result (not those under ``fill``,
        nor ``add`` parts when another part is set); for a bad value, the fields
        holding one. A computed NaN/inf (``log(0)``) names no field.
        """
        detail: dict[int, str] = {}
        for f, rows in rejected:
            ctx.learned = f.prepared
            codes = reason[rows]
            for code in np.unique(codes).tolist():
                sel = rows[codes == code]
                if code == BAD_TIMESTAMP:
                    blames = [(self.timestamp_field, np.ones(ctx.n, dtype=bool))]
                elif code == MISSING_FEATURE:
                    blames = f.compiled.root.missing(ctx)
                else:
                    blames = [
                        (path, ctx.raw_codes(path, kind) == code)
                        for path, kind in f.compiled.fields
                    ]
                detail.update(_explain(f.name, code, sel, blames))
        return detail

    # ---- what the spec reads and writes ------------------------------------------------

    @property
    def names(self) -> tuple[str, ...]:
        """Feature names, in order."""
        return tuple(f.name for f in self._features)

    @property
    def features(self) -> tuple[tuple[str, str], ...]:
        """(name, expression) per feature, in order."""
        return tuple((f.name, f.compiled.text) for f in self._features)

    @property
    def columns(self) -> tuple[str, ...]:
        """Output column names, in order (``st=S0``, ``st=SF``, ``st=other`` for a one-hot)."""
        if self._columns is None:
            for f in self._features:
                missing = f.unfitted()
                if missing is not None:
                    raise _not_fitted(f, missing)
        assert self._columns is not None
        return self._columns

    @property
    def tails(self) -> tuple[int, ...]:
        """Per output column, which way its values are unusual: +1 the higher the
        rarer (rarity, novelty, fan-out), -1 the lower (a share of training), 0 either
        way (``expr.tail_of``); a one-hot's columns 0."""
        self.columns  # noqa: B018 - raises when a one-hot's columns are not known yet
        out: list[int] = []
        for f in self._features:
            cols = f.columns() or ()
            out.extend([0 if f.compiled.multi else tail_of(f.compiled.root)] * len(cols))
        return tuple(out)

    @property
    def fields(self) -> dict[str, str]:
        """Every raw path the spec reads: ``"numeric"``, ``"string"``, or ``"both"``.

        "both" is a path read as a number by one expression and as a category
        by another (``port / 1000`` and ``freq(port)``); a decoder then supplies both.
        """
        out: dict[str, str] = {}
        for f in self._features:
            for path, kind in f.compiled.fields:
                prev = out.get(path)
                out[path] = kind if prev is None or prev == kind else "both"
        if self.windowed:
            out[self.timestamp_field] = "both"  # epoch seconds, or ISO 8601 text
        return out

    @property
    def fitted(self) -> bool:
        """True once :meth:`fit` has run (or a fitted spec was loaded)."""
        return self._fitted_records is not None

    @property
    def fitted_records(self) -> int | None:
        """How many training records the spec was fitted on."""
        return self._fitted_records

    @property
    def needs_fit(self) -> bool:
        """True while some feature must learn from training data before compute."""
        return any(f.unfitted() is not None for f in self._features)

    @property
    def is_plain(self) -> bool:
        """True when every feature is a bare field reference (the models before specs)."""
        return all(type(f.compiled.root) is Ref for f in self._features)

    @property
    def plain_fields(self) -> tuple[str, ...]:
        """The field of each feature of a plain spec, in order."""
        if not self.is_plain:
            raise ValueError("not a plain spec: some feature is more than a field reference")
        return tuple(f.compiled.root.path for f in self._features)  # type: ignore[attr-defined]

    # ---- storage and display -----------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe description: version, features (name, expr, learned state), fit size."""
        return {
            "version": VERSION,
            "features": [
                {
                    "name": f.name,
                    "expr": f.compiled.text,
                    "learned": [_copy_state(s) for s in f.learned],
                }
                for f in self._features
            ],
            "fitted_records": self._fitted_records,
            **({"timestamp_field": self.timestamp_field} if self.windowed else {}),
        }

    def describe(self) -> str:
        """A readable listing: each feature, its columns, and what it learned."""
        n = len(self._features)
        head = f"feature spec v{VERSION}: {n} feature{'s' * (n != 1)}"
        if self._columns is not None:
            head += f" -> {len(self._columns)} column{'s' * (len(self._columns) != 1)}"
        if self._fitted_records is not None:
            head += f", fitted on {self._fitted_records:,} records"
        elif self.needs_fit:
            head += ", not fitted"
        lines = [head]
        width = max(len(f.name) for f in self._features)
        for f in self._features:
            lines.append(f"  {f.name:<{width}}  {f.compiled.text}")
            pad = " " * (width + 4)
            cols = f.columns()
            if cols is None:
                lines.append(f"{pad}columns: learned at fit time")
            elif cols != (f.name,):
                lines.append(f"{pad}columns: {', '.join(cols)}")
            for a, s in zip(f.compiled.fitted, f.learned, strict=False):
                text = a.fn.describe(a, s)
                if text:
                    lines.append(f"{pad}{a.node.source(f.compiled.text)}: {text}")
        fields = ", ".join(f"{p} ({k})" for p, k in self.fields.items())
        lines.append(f"fields read: {fields}")
        if self.windowed:
            lines.append(f"event time: {self.timestamp_field} (window functions)")
        return "\n".join(lines)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FeatureSpec):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def __len__(self) -> int:
        return len(self._features)

    def __repr__(self) -> str:
        fitted = f", fitted on {self._fitted_records} records" if self.fitted else ""
        return f"<FeatureSpec {', '.join(self.names)}{fitted}>"


# ---- helpers ---------------------------------------------------------------------------


def _explain(
    name: str, code: int, rows: np.ndarray, blames: list[tuple[str, np.ndarray]]
) -> dict[int, str]:
    """Detail text per row: rows are grouped by which fields are to blame (one bit each)."""
    paths: list[str] = []
    masks: dict[str, np.ndarray] = {}
    for path, mask in blames:
        if path in masks:
            masks[path] = masks[path] | mask
        elif len(paths) < _MAX_BLAMED:
            paths.append(path)
            masks[path] = mask
    key = np.zeros(len(rows), dtype=np.int64)
    for bit, path in enumerate(paths):
        key |= masks[path][rows].astype(np.int64) << bit
    base = f"feature {name!r}: {REASONS[code]}"
    uniq, inverse = np.unique(key, return_inverse=True)
    texts = []
    for k in uniq.tolist():
        named = [p for bit, p in enumerate(paths) if k >> bit & 1]
        # A plain feature named after its field says it once, as the stream decoder does.
        texts.append(f"{base} ({', '.join(named)})" if named and named != [name] else base)
    return dict(zip(rows.tolist(), [texts[i] for i in inverse.tolist()], strict=True))


def _copy_state(state: Mapping[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, list) else v for k, v in state.items()}


def _check_learned(compiled: Compiled, states: Sequence[Any]) -> None:
    """Stored learned state must match the expression's fitting calls, one for one."""
    calls = compiled.fitted
    if len(states) != len(calls):
        raise SpecError(f"stored learned state has {len(states)} entries, expected {len(calls)}")
    for a, s in zip(calls, states, strict=True):
        if not isinstance(s, Mapping) or s.get("fn") != a.fn.name:
            raise SpecError(
                f"stored learned state does not belong to '{a.fn.name}'", position=a.node.pos
            )
        onehot = a.fn.name == "onehot"
        values = s.get("categories" if onehot else "values")
        counts = s.get("counts")
        ints = ("total", "distinct", "other") if onehot else ("total", "distinct")
        if not (
            isinstance(values, list)
            and isinstance(counts, list)
            and len(values) == len(counts)
            and all(type(v) is str for v in values)
            and len(set(values)) == len(values)
            and all(type(c) is int for c in counts)
            and all(type(s.get(k)) is int for k in ints)
            and s["total"] >= 1
        ):
            raise SpecError(
                f"stored learned state of '{a.fn.name}' is malformed", position=a.node.pos
            )


def _loader() -> type:
    """A YAML SafeLoader that rejects duplicate keys (PyYAML silently keeps the last)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        pass

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            try:
                dup = key in seen
                seen.add(key)
            except TypeError:  # unhashable key: construct_mapping reports it
                break
            if dup:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
        return loader.construct_mapping(node, deep=deep)

    UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return UniqueKeyLoader


def _items_from_yaml(doc: Any) -> list[tuple[Any, Any]]:
    if not isinstance(doc, dict) or "features" not in doc:
        raise SpecError("want a mapping with a 'features' key")
    extra = set(doc) - {"features", "version", "timestamp_field"}
    if extra:
        raise SpecError(f"unknown top-level key(s): {', '.join(sorted(map(str, extra)))}")
    if doc.get("version", VERSION) != VERSION:
        raise SpecError(f"unsupported version {doc['version']!r} (this code reads {VERSION})")
    feats = doc["features"]
    if isinstance(feats, dict):
        return list(feats.items())
    if not isinstance(feats, list):
        raise SpecError("'features' must be a list of {name, expr} or a mapping name: expr")
    items = []
    for i, f in enumerate(feats):
        if not isinstance(f, dict) or set(f) != {"name", "expr"}:
            raise SpecError(f"features[{i}]: want a mapping with exactly 'name' and 'expr'")
        items.append((f["name"], f["expr"]))
    return items
