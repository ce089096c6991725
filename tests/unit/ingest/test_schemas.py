"""stream.ingest.schemas: sensor field names read as flow event fields.

Pure unit tests over the sample files in tests/data (see SOURCES.md). Every
expected value below was worked out by hand from those files, not by running
the code under test: a byte count is the two sides added up, a sampled
counter is multiplied by the sampling rate, and so on.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from stream.features import MISSING, FeatureSpec, RecordColumns, SpecError
from stream.features.columns import numeric_column, string_column
from stream.ingest.files import iter_records, read_records
from stream.ingest.schemas import (
    CANONICAL_FIELDS,
    SCHEMAS,
    Schema,
    SchemaColumns,
    get_schema,
    to_native,
)
from stream.outcomes.reasons import MISSING_FEATURE, NON_NUMERIC_FEATURE, OK

DATA = Path(__file__).resolve().parents[2] / "data"
M = None  # an expected value that is missing (code MISSING_FEATURE)


def load(name: str) -> list[dict[str, Any]]:
    rows = list(read_records(DATA / name, "jsonl"))
    assert all(r is not None for _, r, _ in rows), rows
    return [r for _, r, _ in rows]  # type: ignore[misc]


def zeek_cols(name: str = "zeek_conn_kafka.jsonl") -> SchemaColumns:
    return SchemaColumns(RecordColumns(load(name)), get_schema("zeek"))


def numbers(cols: Any, path: str) -> list[float | None]:
    """``cols.numeric(path)`` as a list, None where the code is MISSING_FEATURE."""
    values, codes = cols.numeric(path)
    assert set(codes.tolist()) <= {OK, MISSING_FEATURE}, (path, codes)
    assert np.isnan(values[codes != OK]).all()
    return [None if c else v for v, c in zip(values.tolist(), codes.tolist(), strict=True)]


def texts(cols: Any, path: str) -> list[str | None]:
    values, codes = cols.strings(path)
    assert set(codes.tolist()) <= {OK, MISSING_FEATURE}, (path, codes)
    assert all((v is None) == bool(c) for v, c in zip(values, codes, strict=True))
    return values.tolist()


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON text, so 3 and 3.0 differ and key order counts."""
    return orjson.dumps(a) == orjson.dumps(b)


# ---- the schemas ---------------------------------------------------------------------------


def test_schemas_by_name_and_unknown_name() -> None:
    assert list(SCHEMAS) == ["native", "zeek", "suricata", "goflow2"]
    for name, schema in SCHEMAS.items():
        assert get_schema(name) is schema and schema.name == name and schema.doc
        assert set(schema.aliases) <= {*CANONICAL_FIELDS, "flow_id"}
    assert not SCHEMAS["native"].aliases and not SCHEMAS["native"].wrappers
    assert SCHEMAS["zeek"].wrappers == ("conn",)
    for bad in ("Zeek", "eve", "", "netflow"):
        with pytest.raises(ValueError) as info:
            get_schema(bad)
        msg = str(info.value)
        assert "\n" not in msg and repr(bad) in msg
        assert msg.endswith("expected one of native, zeek, suricata, goflow2, goflow2-pb")
    # goflow2's protobuf is read as its JSON, by the same schema.
    assert get_schema("goflow2-pb") is SCHEMAS["goflow2"]


def test_schema_is_frozen_hashable_and_compiled_once() -> None:
    zeek = get_schema("zeek")
    assert hash(zeek) == hash(Schema("zeek", dict(zeek.aliases), ("conn",), zeek.doc))
    with pytest.raises(AttributeError):
        zeek.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        zeek.aliases["src_ip"] = "x"  # type: ignore[index]
    assert zeek.compiled["bytes_transferred"].text == "add(orig_bytes, resp_bytes)"
    assert zeek.plain("src_ip") == "id.orig_h" and zeek.plain("bytes_transferred") is None
    assert zeek.reads("packet_count") == ("orig_pkts", "resp_pkts")
    assert get_schema("goflow2").reads("bytes_transferred") == ("bytes", "sampling_rate")


def test_bad_alias_is_a_spec_error_at_definition() -> None:
    with pytest.raises(SpecError, match="schema 'x', alias 'bytes_transferred'"):
        Schema("x", {"bytes_transferred": "add(a,"})
    with pytest.raises(SpecError, match="per-record"):
        Schema("x", {"protocol": "freq(proto)"})


def test_sample_files_are_the_documented_size() -> None:
    for name in (
        "zeek_conn_kafka.jsonl",
        "zeek_conn_kafka_tagged.jsonl",
        "suricata_eve_flow.jsonl",
        "goflow2.jsonl",
    ):
        assert 10 <= len(load(name)) <= 30, name


# ---- zeek ----------------------------------------------------------------------------------

ZEEK_SRC_IP = [
    "10.1.0.15", "10.1.0.15", "10.1.0.22", *["10.1.0.66"] * 10, "10.1.0.15", "10.1.0.15",
    "10.1.0.22",
]  # fmt: skip
ZEEK_DST_IP = [
    "93.184.216.34", "10.1.0.2", "203.0.113.80", *["10.1.0.40"] * 10, "198.51.100.53",
    "1.1.1.1", "198.51.100.7",
]  # fmt: skip
ZEEK_SRC_PORT = [51544, 40112, 49812, *range(61001, 61011), 53211, 8, 50022]
ZEEK_DST_PORT = [443, 53, 80, 21, 22, 23, 25, 80, 110, 139, 445, 3389, 8080, 53, 0, 22]
ZEEK_PROTO = ["tcp", "udp", "tcp"] + ["tcp"] * 10 + ["udp", "icmp", "tcp"]
# 1834+52311, 42+58, 389+10240; S0 and the instant REJ have no bytes at all;
# REJ, the retransmitted SYN and the later REJs have 0+0; ICMP 192+192; SSH 4077+5131.
ZEEK_BYTES = [54145, 100, 10629, M, 0, M, M, 0, 0, M, M, 0, M, M, 384, 9208]
# Packets are counted even without a duration: 31+48, 1+1, 8+10, S0 1+0, REJ 1+1, ...
ZEEK_PKTS = [79, 2, 18, 1, 2, 1, 2, 2, 2, 1, 1, 2, 1, 1, 8, 74]
ZEEK_DURATION = [
    2.342117, 0.001204, 0.412875, M, 0.000071, M, M, 1.001532, 0.000066, M, M, 0.000069,
    M, M, 3.004518, 65.210093,
]  # fmt: skip
ZEEK_TS = [
    1717236000.101234, 1717236000.250871, 1717236001.002347, 1717236002.000112,
    1717236002.000287, 1717236002.000455, 1717236002.000619, 1717236002.000783,
    1717236002.000951, 1717236002.00112, 1717236002.001288, 1717236002.001453,
    1717236002.001617, 1717236003.412009, 1717236004.500033, 1717236005.777301,
]  # fmt: skip


@pytest.mark.parametrize("name", ["zeek_conn_kafka.jsonl", "zeek_conn_kafka_tagged.jsonl"])
def test_zeek_aliases(name: str) -> None:
    cols = zeek_cols(name)
    assert texts(cols, "src_ip") == ZEEK_SRC_IP
    assert texts(cols, "dst_ip") == ZEEK_DST_IP
    assert numbers(cols, "src_port") == ZEEK_SRC_PORT
    assert numbers(cols, "dst_port") == ZEEK_DST_PORT
    assert texts(cols, "protocol") == ZEEK_PROTO
    assert numbers(cols, "bytes_transferred") == ZEEK_BYTES
    assert numbers(cols, "packet_count") == ZEEK_PKTS
    assert numbers(cols, "connection_duration") == ZEEK_DURATION
    assert numbers(cols, "timestamp") == ZEEK_TS
    assert texts(cols, "flow_id")[:2] == ["CzKq1d3VbQf8mXo1Wa", "C8wJ0b1ZP2tW3dQyKe"]
    # Numeric aliases read as categories: canonical text, the same rows missing.
    assert texts(cols, "dst_port")[:4] == ["443", "53", "80", "21"]
    assert texts(cols, "bytes_transferred") == [None if b is None else str(b) for b in ZEEK_BYTES]
    # Everything else passes through under its own name.
    assert texts(cols, "conn_state") == [
        "SF", "SF", "SF", "S0", "REJ", "S0", "REJ", "S0", "REJ", "S0", "S0", "REJ", "S0",
        "S0", "OTH", "RSTO",
    ]  # fmt: skip
    assert texts(cols, "history")[3:5] == ["S", "Sr"]
    assert texts(cols, "service")[:4] == ["ssl", "dns", "http", None]
    assert numbers(cols, "orig_ip_bytes")[:4] == [3454, 70, 721, 44]
    assert texts(cols, "id.orig_h") == ZEEK_SRC_IP  # the raw names still work too


def test_zeek_unset_fields_stay_missing_not_zero() -> None:
    cols = zeek_cols()
    for path in ("connection_duration", "bytes_transferred"):
        values, codes = cols.numeric(path)
        assert codes[3] == MISSING_FEATURE and math.isnan(values[3])  # S0: one SYN, no answer
        assert codes[6] == MISSING_FEATURE  # REJ within the same microsecond: no duration
    assert cols.numeric("bytes_transferred")[0][7] == 0.0  # retransmitted SYN: 0 bytes, set
    assert cols.strings("service")[1][3] == MISSING_FEATURE


def test_tag_json_wrappers_give_the_same_columns() -> None:
    plain, tagged = zeek_cols(), zeek_cols("zeek_conn_kafka_tagged.jsonl")
    paths = [*get_schema("zeek").aliases, "conn_state", "history", "service", "local_resp"]
    for path in paths:
        for kind in ("numeric", "strings"):
            (pv, pc), (tv, tc) = getattr(plain, kind)(path), getattr(tagged, kind)(path)
            assert pc.tolist() == tc.tolist(), (path, kind)
            assert [v for v in pv.tolist() if v == v] == [v for v in tv.tolist() if v == v]


def test_wrapper_lookup_top_level_first_and_only_for_missing_rows() -> None:
    class Rec(dict):  # type: ignore[type-arg]
        """A record that notes every key it is asked for."""

        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            self.asked: list[str] = []

        def get(self, key: str, *default: Any) -> Any:
            self.asked.append(key)
            return super().get(key, *default)

    records = [
        Rec({"conn": {"orig_bytes": 1, "resp_bytes": 2}}),
        Rec({"orig_bytes": 10, "resp_bytes": 5, "conn": {"orig_bytes": 99}}),  # top level wins
        Rec({"orig_bytes": None, "resp_bytes": 0, "conn": {"orig_bytes": 7}}),  # null: wrapper
        Rec({"orig_bytes": 3, "resp_bytes": 0}),  # not wrapped at all
        Rec({"conn": "not an object", "resp_bytes": 4}),
        Rec({}),
    ]
    cols = SchemaColumns(RecordColumns(records), get_schema("zeek"))
    assert numbers(cols, "bytes_transferred") == [3, 15, 7, 3, 4, M]
    # conn.<field> was asked of the rows the top level did not have, and only of those.
    asked = [set(r.asked) for r in records]
    assert "conn.orig_bytes" in asked[0] and "conn.orig_bytes" in asked[2]
    assert "conn.orig_bytes" not in asked[1] and "conn.orig_bytes" not in asked[3]
    assert "conn.resp_bytes" in asked[0] and "conn.resp_bytes" not in asked[1]
    # The record's own canonical field is looked for only where the alias found nothing.
    assert "bytes_transferred" in asked[5]
    assert not any("bytes_transferred" in a for a in asked[:5])


# ---- suricata ------------------------------------------------------------------------------


def test_suricata_aliases_and_passthrough() -> None:
    records = load("suricata_eve_flow.jsonl")
    cols = SchemaColumns(RecordColumns(records), get_schema("suricata"))
    scan = ["10.1.0.66"] * 9
    assert texts(cols, "src_ip") == [
        "10.1.0.15", "10.1.0.15", "10.1.0.15", "10.1.0.22", "10.1.0.22", *scan, "10.1.0.15",
        "10.1.0.22", "fd00:0001:0000:0000:0000:0000:0000:0015", "10.1.0.15",
    ]  # fmt: skip
    assert texts(cols, "dst_ip") == [
        "93.184.216.34", "10.1.0.2", "10.1.0.2", "203.0.113.80", "203.0.113.80",
        *["10.1.0.40"] * 9, "1.1.1.1", "198.51.100.7",
        "2001:0db8:0000:0000:0000:0000:0000:0123", "93.184.216.34",
    ]  # fmt: skip
    # The ICMP flow has no ports (its type and code are icmp_type/icmp_code).
    assert numbers(cols, "src_port") == [
        51544, 40112, 40112, 49812, 49812, *range(61001, 61010), M, 50022, 123, 51610,
    ]  # fmt: skip
    assert numbers(cols, "dst_port") == [
        443, 53, 53, 80, 80, 21, 22, 23, 25, 80, 110, 139, 445, 3389, M, 22, 123, 443,
    ]  # fmt: skip
    assert texts(cols, "protocol") == [
        "TCP", "UDP", "UDP", "TCP", "TCP", *["TCP"] * 9, "ICMP", "TCP", "UDP", "TCP",
    ]  # fmt: skip
    # toserver + toclient: 3454+54823, 84+100, the dns event has no flow object, 829+10912,
    # the alert's counters so far 469+140, SYN only 58+0, SYN answered by RST 58+54, ...
    assert numbers(cols, "bytes_transferred") == [
        58277, 184, M, 11741, 609, 58, 112, 58, 112, 58, 112, 58, 58, 112, 784, 14108, 220,
        211172,
    ]  # fmt: skip
    assert numbers(cols, "packet_count") == [
        79, 2, M, 18, 6, 1, 2, 1, 2, 1, 2, 1, 1, 2, 8, 74, 2, 300,
    ]  # fmt: skip
    # flow.age, whole seconds; alert and dns events have none.
    assert numbers(cols, "connection_duration") == [
        2, 0, M, 0, M, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 65, 0, 120,
    ]  # fmt: skip
    ts = texts(cols, "timestamp")
    assert ts[0] == "2024-06-01T10:00:00.101234+0000"
    assert ts[17] == "2024-06-01T10:00:08.640512+0000"
    assert cols.numeric("timestamp")[1].tolist() == [NON_NUMERIC_FEATURE] * 18  # ISO text
    assert texts(cols, "event_type")[:5] == ["flow", "flow", "dns", "flow", "alert"]
    assert texts(cols, "flow.state")[:6] == ["closed", "established", M, "closed", M, "new"]
    assert texts(cols, "app_proto")[:6] == ["tls", "dns", M, "http", "http", M]
    assert texts(cols, "tcp.state")[5:7] == ["syn_sent", "closed"]
    assert numbers(cols, "flow.bypassed.bytes_toserver")[15] == 4911
    assert numbers(cols, "icmp_type")[14] == 8


# ---- goflow2 -------------------------------------------------------------------------------


def test_goflow2_aliases_with_sampling() -> None:
    cols = SchemaColumns(RecordColumns(load("goflow2.jsonl")), get_schema("goflow2"))
    scan = ["10.1.0.66"] * 9
    assert texts(cols, "src_ip") == [
        "10.1.0.15", "10.1.0.15", "203.0.113.80", "10.1.0.22", *scan, "10.1.0.15",
        "fd00:1::15", "93.184.216.34", "10.1.0.15",
    ]  # fmt: skip
    assert texts(cols, "dst_ip") == [
        "93.184.216.34", "10.1.0.2", "10.1.0.22", "203.0.113.80", *["10.1.0.40"] * 9,
        "1.1.1.1", "2001:db8::1", "10.1.0.15", "198.51.100.53",
    ]  # fmt: skip
    assert numbers(cols, "src_port") == [
        51544, 40112, 80, 49812, *range(61001, 61010), 0, 0, 443, 53211,
    ]  # fmt: skip
    assert numbers(cols, "dst_port") == [
        443, 53, 49812, 80, 21, 22, 23, 25, 80, 110, 139, 445, 3389, 0, 0, 51610, 53,
    ]  # fmt: skip
    assert texts(cols, "protocol") == [
        "TCP", "UDP", "TCP", "TCP", *["TCP"] * 9, "ICMP", "ICMPv6", "TCP", "UDP",
    ]  # fmt: skip
    # sFlow: one sampled packet of 1514 B at 1:1000, 84 B at 1:1000; NetFlow v9 with
    # sampling_rate 0 (unknown) counts as 1:1; the IPFIX scan is 1:1; NetFlow v5 0 -> 1;
    # IPFIX ICMPv6 1:1; sFlow 1448 B at 1:512; IPFIX DNS 73 B at 1:100.
    assert numbers(cols, "bytes_transferred") == [
        1514000, 84000, 10912, 829, *[44] * 9, 336, 208, 741376, 7300,
    ]  # fmt: skip
    assert numbers(cols, "packet_count") == [1000, 1000, 10, 8, *[1] * 9, 4, 2, 512, 100]
    # ns counters through float64 are exact to a few hundred ns: compare to the microsecond.
    duration = numbers(cols, "connection_duration")
    assert duration == pytest.approx([0, 0, 0.413, 0.412, *[0] * 9, 3.004, 0.021, 0, 0], abs=1e-6)
    assert numbers(cols, "timestamp") == pytest.approx(
        [
            1717236000.101234, 1717236000.250871, 1717236001.002, 1717236001.002,
            *[1717236002.000112 + 0.000168 * i for i in range(1, 10)],
            1717236004.5, 1717236006.01, 1717236009.870001, 1717236003.412,
        ],
        abs=1e-6,
    )  # fmt: skip
    assert numbers(cols, "sampling_rate")[:3] == [1000, 1000, 0]  # raw fields pass through


def test_goflow2_sampling_rate_zero_or_absent_means_one() -> None:
    records: list[dict[str, Any]] = [
        {"bytes": 100, "packets": 2, "sampling_rate": 0},
        {"bytes": 100, "packets": 2},
        {"bytes": 100, "packets": 2, "sampling_rate": None},
        {"bytes": 100, "packets": 2, "sampling_rate": 1},
        {"bytes": 100, "packets": 2, "sampling_rate": 64},
        {"packets": 2, "sampling_rate": 64},
        {"bytes": 100, "packets": 2, "sampling_rate": "64"},  # text is not a rate
    ]
    cols = SchemaColumns(RecordColumns(records), get_schema("goflow2"))
    values, codes = cols.numeric("bytes_transferred")
    assert codes.tolist() == [OK, OK, OK, OK, OK, MISSING_FEATURE, NON_NUMERIC_FEATURE]
    assert values[:5].tolist() == [100, 100, 100, 100, 6400]
    assert cols.numeric("packet_count")[0][:6].tolist() == [2, 2, 2, 2, 128, 128]


# ---- columns in general --------------------------------------------------------------------


class PlainSource:
    """Another ColumnSource implementation: no caching, its own per-record lookup."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.records = records
        self.n = len(records)

    @staticmethod
    def find(rec: Any, path: str) -> Any:
        if isinstance(rec, dict) and path in rec:
            return rec[path]
        parts = path.split(".")
        for i in range(1, len(parts)):
            head = ".".join(parts[:i])
            if isinstance(rec, dict) and isinstance(rec.get(head), dict):
                found = PlainSource.find(rec[head], ".".join(parts[i:]))
                if found is not MISSING:
                    return found
        return MISSING

    def numeric(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        return numeric_column([self.find(r, path) for r in self.records])

    def strings(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        return string_column([self.find(r, path) for r in self.records])


@pytest.mark.parametrize(
    ("name", "files"),
    [
        ("zeek", ["zeek_conn_kafka.jsonl"]),
        ("zeek", ["zeek_conn_kafka.jsonl", "zeek_conn_kafka_tagged.jsonl"]),  # mixed batch
        ("suricata", ["suricata_eve_flow.jsonl"]),
        ("goflow2", ["goflow2.jsonl"]),
    ],
)
def test_same_columns_for_every_source_implementation(name: str, files: list[str]) -> None:
    records = [r for f in files for r in load(f)]
    records = records[::2] + records[1::2]  # tagged and untagged rows interleaved
    schema = get_schema(name)
    a = SchemaColumns(RecordColumns(records), schema)
    b = SchemaColumns(PlainSource(records), schema)
    for path in [*schema.aliases, "conn_state", "flow.state", "nope"]:
        for kind in ("numeric", "strings"):
            (av, ac), (bv, bc) = getattr(a, kind)(path), getattr(b, kind)(path)
            assert ac.tolist() == bc.tolist(), (path, kind)
            assert ac.dtype == np.uint8 and len(av) == len(records)
            if kind == "numeric":
                assert av.dtype == np.float64
                np.testing.assert_array_equal(av, bv)
            else:
                assert av.tolist() == bv.tolist()


def test_columns_are_cached_per_path() -> None:
    cols = zeek_cols()
    assert cols.numeric("bytes_transferred") is cols.numeric("bytes_transferred")
    assert cols.strings("bytes_transferred") is cols.strings("bytes_transferred")
    assert cols.strings("src_ip") is cols.strings("src_ip")
    assert cols.numeric("conn_state") is cols.numeric("conn_state")


def test_native_schema_passes_everything_through() -> None:
    records = [{"bytes_transferred": 5, "src_ip": "10.0.0.1"}, {"tenant_id": "acme"}]
    inner = RecordColumns(records)
    cols = SchemaColumns(inner, get_schema("native"))
    assert cols.numeric("bytes_transferred") is inner.numeric("bytes_transferred")
    assert cols.strings("src_ip") is inner.strings("src_ip")
    assert to_native(records, get_schema("native")) == records


def test_already_mapped_records_read_the_same() -> None:
    """Records ZEEK_MAPPING already renamed keep their canonical fields under the zeek schema."""
    mapped = [r for _, r, _ in iter_records(DATA / "zeek_conn_kafka.jsonl", fmt="zeek-json")]
    assert mapped and "orig_bytes" not in mapped[0]
    raw_cols, mapped_cols = zeek_cols(), SchemaColumns(RecordColumns(mapped), get_schema("zeek"))
    for path in get_schema("zeek").aliases:
        assert raw_cols.strings(path)[0].tolist() == mapped_cols.strings(path)[0].tolist()
        np.testing.assert_array_equal(raw_cols.numeric(path)[1], mapped_cols.numeric(path)[1])
    assert to_native(mapped, get_schema("zeek")) == mapped


def test_feature_spec_over_schema_columns() -> None:
    spec = FeatureSpec.parse(
        [
            ("dur", "fill(connection_duration, 0)"),
            ("lb", "log1p(fill(bytes_transferred, 0))"),
            ("st", 'onehot(conn_state, ["S0", "SF", "REJ"])'),
        ]
    )
    for name in ("zeek_conn_kafka.jsonl", "zeek_conn_kafka_tagged.jsonl"):
        out = spec.compute(zeek_cols(name))
        assert out.reason.tolist() == [OK] * 16 and not out.detail
        dur = [0.0 if d is None else d for d in ZEEK_DURATION]
        assert out.X[:, 0].tolist() == dur
        assert out.X[:, 1].tolist() == [math.log1p(b or 0) for b in ZEEK_BYTES]
        assert out.X[:4, 2:].tolist() == [[0, 1, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0]]
        assert out.X[14:, 2:].tolist() == [[0, 0, 0, 1], [0, 0, 0, 1]]  # OTH, RSTO: other
    # Without fill, a scan's S0 row is rejected and the canonical field is named.
    strict = FeatureSpec.parse([("dur", "connection_duration")]).compute(zeek_cols())
    assert strict.reason[3] == MISSING_FEATURE
    assert "connection_duration" in strict.detail[3]


# ---- to_native -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["conn.log", "conn.json"])
def test_to_native_equals_zeek_mapping(name: str) -> None:
    raw = [r for _, r, _ in read_records(DATA / name)]
    mapped = [r for _, r, _ in iter_records(DATA / name)]  # ZEEK_MAPPING
    native = to_native(raw, get_schema("zeek"))
    assert len(native) == len(mapped) == 6
    for a, b in zip(native, mapped, strict=True):
        assert same_json(a, b), (a, b)


def test_to_native_zeek_samples_tagged_or_not() -> None:
    zeek = get_schema("zeek")
    plain = load("zeek_conn_kafka.jsonl")
    native = to_native(plain, zeek)
    tagged = to_native(load("zeek_conn_kafka_tagged.jsonl"), zeek)
    assert [same_json(a, b) for a, b in zip(native, tagged, strict=True)] == [True] * 16
    mapped = [r for _, r, _ in iter_records(DATA / "zeek_conn_kafka.jsonl", fmt="zeek-json")]
    assert [same_json(a, b) for a, b in zip(native, mapped, strict=True)] == [True] * 16
    s0 = native[3]
    assert s0 == {
        "conn_state": "S0", "local_orig": True, "local_resp": True, "missed_bytes": 0,
        "history": "S", "orig_ip_bytes": 44, "resp_ip_bytes": 0,
        "timestamp": 1717236002.000112, "flow_id": "CfH3kR8sVw2Lq9Zp1a",
        "src_ip": "10.1.0.66", "src_port": 61001, "dst_ip": "10.1.0.40", "dst_port": 21,
        "protocol": "tcp", "packet_count": 1,
    }  # fmt: skip
    assert plain[3]["id.orig_h"] == "10.1.0.66"  # the input is not modified


def test_to_native_suricata_removes_nested_fields_and_keeps_other_events() -> None:
    records = load("suricata_eve_flow.jsonl")
    before = orjson.dumps(records)
    native = to_native(records, get_schema("suricata"))
    assert orjson.dumps(records) == before  # nested objects were copied, not modified
    tls = native[0]
    assert tls["flow"] == {
        "start": "2024-06-01T10:00:00.101234+0000",
        "end": "2024-06-01T10:00:02.443351+0000",
        "state": "closed",
        "reason": "timeout",
        "alerted": False,
    }
    assert (tls["src_ip"], tls["dst_ip"], tls["src_port"], tls["dst_port"]) == (
        "10.1.0.15", "93.184.216.34", 51544, 443,
    )  # fmt: skip
    assert (tls["bytes_transferred"], tls["packet_count"], tls["connection_duration"]) == (
        58277, 79, 2,
    )  # fmt: skip
    assert "dest_ip" not in tls and "proto" not in tls and tls["tcp"]["state"] == "closed"
    dns = native[2]
    assert dns["event_type"] == "dns" and dns["dns"] == records[2]["dns"]
    assert "bytes_transferred" not in dns and "connection_duration" not in dns
    alert = native[4]
    assert alert["alert"] == records[4]["alert"] and alert["bytes_transferred"] == 609
    assert alert["flow"] == {"start": "2024-06-01T10:00:01.002347+0000"}
    assert "src_port" not in native[14] and native[14]["icmp_type"] == 8


def test_to_native_goflow2_writes_integral_counts_as_ints() -> None:
    native = to_native(load("goflow2.jsonl"), get_schema("goflow2"))
    first = native[0]
    assert first["bytes_transferred"] == 1514000 and type(first["bytes_transferred"]) is int
    assert first["packet_count"] == 1000 and first["connection_duration"] == 0
    assert first["timestamp"] == pytest.approx(1717236000.101234, abs=1e-6)
    for gone in ("bytes", "packets", "sampling_rate", "time_flow_start_ns", "src_addr", "proto"):
        assert gone not in first
    assert first["type"] == "SFLOW_5" and first["time_received_ns"] == 1717236000101234000


def test_to_native_keeps_raw_fields_it_cannot_compute() -> None:
    records = [{"orig_bytes": "lots", "resp_bytes": 3, "duration": 1.5}]
    (native,) = to_native(records, get_schema("zeek"))
    assert native == {"orig_bytes": "lots", "resp_bytes": 3, "connection_duration": 1.5}


def test_to_native_and_columns_agree_on_the_samples() -> None:
    """Reading the native records plainly gives the schema's columns: one code, two paths."""
    for name, file in [
        ("zeek", "zeek_conn_kafka_tagged.jsonl"),
        ("suricata", "suricata_eve_flow.jsonl"),
        ("goflow2", "goflow2.jsonl"),
    ]:
        records = load(file)
        cols = SchemaColumns(RecordColumns(records), get_schema(name))
        native = RecordColumns(to_native(records, get_schema(name)))
        for path in CANONICAL_FIELDS:
            for kind in ("numeric", "strings"):
                (av, ac), (bv, bc) = getattr(cols, kind)(path), getattr(native, kind)(path)
                assert ac.tolist() == bc.tolist(), (name, path, kind)
                if kind == "strings":
                    assert av.tolist() == bv.tolist(), (name, path)
                else:
                    np.testing.assert_array_equal(av, bv)
