"""stream.ingest.files: readers, format detection, mappings, timestamps and whole-file loading."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stream.generate import generate_flows, write_jsonl
from stream.ingest.files import (
    ZEEK_MAPPING,
    FieldMapping,
    LoadResult,
    MappingError,
    Unreadable,
    count_records,
    detect_format,
    epoch_seconds,
    iter_records,
    load_records,
    parse_mapping,
    read_csv,
    read_jsonl,
    read_parquet,
    read_records,
    read_zeek,
)

DATA = Path(__file__).resolve().parents[2] / "data"
CONN_LOG = DATA / "conn.log"
CONN_JSON = DATA / "conn.json"

BROKEN_JSONL = b"\n".join(
    [
        b'{"tenant_id": "acme", "bytes_transferred": 10}',  # 1
        b"",  # 2: blank, skipped silently
        b'{"tenant_id": "acme", "bytes_transferred": ',  # 3: truncated
        b"[1, 2, 3]",  # 4: not an object
        b'"just a string"',  # 5: not an object
        b'{"tenant_id": "globex", "bytes_transferred": 20}',  # 6
        b"{oops}",  # 7: malformed
        b'{"tenant_id": "initech"}',  # 8
    ]
)


def _good(rows: list) -> list[tuple[int, dict]]:
    return [(n, r) for n, r, reason in rows if r is not None]


def _bad(rows: list) -> list[tuple[int, str]]:
    return [(n, reason) for n, r, reason in rows if r is None]


# --------------------------------------------------------------------------- JSONL


@pytest.mark.parametrize("name", ["in.jsonl", "in.jsonl.gz"])
def test_jsonl_reader_reports_broken_lines_with_numbers(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(gzip.compress(BROKEN_JSONL) if name.endswith(".gz") else BROKEN_JSONL)
    rows = list(read_jsonl(path))
    assert _good(rows) == [
        (1, {"tenant_id": "acme", "bytes_transferred": 10}),
        (6, {"tenant_id": "globex", "bytes_transferred": 20}),
        (8, {"tenant_id": "initech"}),
    ]
    bad = dict(_bad(rows))
    assert sorted(bad) == [3, 4, 5, 7]
    assert bad[3].startswith("malformed JSON")
    assert bad[4] == "expected a JSON object, got an array"
    assert bad[5] == "expected a JSON object, got a string"
    assert detect_format(path) == "jsonl"


def test_truncated_gzip_keeps_the_lines_before_the_cut(tmp_path: Path) -> None:
    path = tmp_path / "cut.jsonl.gz"
    whole = gzip.compress(b"".join(b'{"i": %d}\n' % i for i in range(2_000)))
    path.write_bytes(whole[: len(whole) // 2])
    rows = list(read_records(path))
    good, bad = _good(rows), _bad(rows)
    assert 0 < len(good) < 2_000
    assert [r["i"] for _, r in good] == list(range(len(good)))
    assert len(bad) == 1 and bad[0][1].startswith("cannot read further")


def test_gzip_is_recognised_by_content_not_name(tmp_path: Path) -> None:
    path = tmp_path / "capture.bin"
    path.write_bytes(gzip.compress(b'{"a": 1}\n{"a": 2}\n'))
    assert detect_format(path) == "jsonl"
    assert [r for _, r, _ in read_records(path)] == [{"a": 1}, {"a": 2}]


# --------------------------------------------------------------------------- CSV

CSV_TEXT = (
    "tenant_id,bytes_transferred,connection_duration,src_ip,note\n"  # 1
    "acme,1200,0.5,10.0.0.1,plain\n"  # 2
    "globex,-7,1e3,10.0.0.2,\n"  # 3: empty cell -> field absent
    "initech,12,3\n"  # 4: too few columns
    '"acme",007,.25,10.0.0.3,"two\nlines"\n'  # 5-6: quoted newline
    "\n"  # 7: blank
    "acme,1,2,10.0.0.4,x,extra\n"  # 8: too many columns
    "acme,1.2.3,nan,::1,ok\n"  # 9: not numbers
)


@pytest.mark.parametrize("name", ["in.csv", "in.csv.gz"])
def test_csv_reader_converts_numbers_and_reports_bad_rows(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    data = CSV_TEXT.encode()
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    assert detect_format(path) == "csv"
    rows = list(read_csv(path))
    good = _good(rows)
    assert good[0] == (
        2,
        {
            "tenant_id": "acme",
            "bytes_transferred": 1200,
            "connection_duration": 0.5,
            "src_ip": "10.0.0.1",
            "note": "plain",
        },
    )
    assert good[1] == (
        3,
        {
            "tenant_id": "globex",
            "bytes_transferred": -7,
            "connection_duration": 1000.0,
            "src_ip": "10.0.0.2",
        },
    )
    assert good[2][0] == 5
    assert good[2][1]["bytes_transferred"] == 7
    assert good[2][1]["connection_duration"] == 0.25
    assert good[2][1]["note"] == "two\nlines"
    assert good[3] == (
        9,
        {
            "tenant_id": "acme",
            "bytes_transferred": "1.2.3",
            "connection_duration": "nan",
            "src_ip": "::1",
            "note": "ok",
        },
    )
    assert type(good[0][1]["bytes_transferred"]) is int
    assert _bad(rows) == [(4, "expected 5 columns, got 3"), (8, "expected 5 columns, got 6")]


# --------------------------------------------------------------------------- Parquet


def test_parquet_reader_rows_nulls_and_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "flows.parquet"
    table = pa.table(
        {
            "tenant_id": ["acme", "globex", None],
            "bytes_transferred": [100, None, 300],
            "connection_duration": [0.5, 1.5, 2.5],
            "ts": pa.array(
                [datetime(2024, 1, 1, 0, 0, i) for i in range(3)], type=pa.timestamp("us")
            ),
        }
    )
    pq.write_table(table, path)
    assert detect_format(path) == "parquet"
    rows = list(read_parquet(path, batch_size=2))
    assert rows == [
        (
            1,
            {
                "tenant_id": "acme",
                "bytes_transferred": 100,
                "connection_duration": 0.5,
                "ts": "2024-01-01T00:00:00Z",
            },
            None,
        ),
        (
            2,
            {"tenant_id": "globex", "connection_duration": 1.5, "ts": "2024-01-01T00:00:01Z"},
            None,
        ),
        (
            3,
            {"bytes_transferred": 300, "connection_duration": 2.5, "ts": "2024-01-01T00:00:02Z"},
            None,
        ),
    ]
    assert count_records(path) == 3


def test_unreadable_parquet_is_one_rejection(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not really parquet")
    rows = list(read_records(path))
    assert len(rows) == 1
    assert rows[0][0] == 0 and rows[0][1] is None
    assert "Parquet" in rows[0][2]


# --------------------------------------------------------------------------- Zeek


def test_zeek_tsv_reader_types_unset_and_empty() -> None:
    assert detect_format(CONN_LOG) == "zeek"
    rows = list(read_zeek(CONN_LOG))
    assert _bad(rows) == []
    good = _good(rows)
    # Eight header lines precede the first connection.
    assert [n for n, _ in good] == [9, 10, 11, 12, 13, 14]
    first = good[0][1]
    assert first["ts"] == 1709287200.123456
    assert first["id.orig_h"] == "10.0.0.5"
    assert first["id.resp_p"] == 443 and type(first["id.resp_p"]) is int
    assert first["duration"] == pytest.approx(1.204118)
    assert first["local_orig"] is True and first["local_resp"] is False
    assert first["tunnel_parents"] == []  # (empty) set
    s0 = good[2][1]  # an S0 connection: service, duration and byte counts unset
    assert "duration" not in s0 and "orig_bytes" not in s0 and "service" not in s0
    assert good[5][1]["tunnel_parents"] == ["Cabc", "Cdef"]


def test_zeek_mapping_renames_and_sums() -> None:
    records = _good(list(iter_records(CONN_LOG)))
    first = records[0][1]
    assert first["src_ip"] == "10.0.0.5"
    assert first["dst_ip"] == "203.0.113.34"
    assert first["src_port"] == 49152 and first["dst_port"] == 443
    assert first["protocol"] == "tcp"
    assert first["timestamp"] == 1709287200.123456
    assert first["flow_id"] == "CHhAvVGS1DHFjwGM9"
    assert first["connection_duration"] == pytest.approx(1.204118)
    assert first["bytes_transferred"] == 1520 + 48211
    assert first["packet_count"] == 24 + 40
    # Renamed sources are gone; fields without a rule pass through.
    assert not {"id.orig_h", "orig_bytes", "resp_bytes", "ts", "uid", "duration"} & set(first)
    assert first["conn_state"] == "SF" and first["history"] == "ShADadFf"
    s0 = records[2][1]
    assert "bytes_transferred" not in s0  # both parts unset
    assert "connection_duration" not in s0
    assert s0["packet_count"] == 1  # 1 + 0
    one_sided = records[3][1]
    assert one_sided["bytes_transferred"] == 412  # resp_bytes unset counts as 0
    assert one_sided["packet_count"] == 6


def test_zeek_json_form_maps_to_the_same_records() -> None:
    assert detect_format(CONN_JSON) == "zeek-json"
    tsv = [r for _, r in _good(list(iter_records(CONN_LOG)))]
    js = [r for _, r in _good(list(iter_records(CONN_JSON)))]
    assert js == tsv


def test_zeek_tsv_broken_lines(tmp_path: Path) -> None:
    lines = CONN_LOG.read_text().splitlines()
    header, data = lines[:8], lines[8:14]
    broken = [
        data[0],  # 1
        "one\ttwo",  # 2: wrong field count
        data[1].replace("\t53\t", "\tfifty-three\t", 1),  # 3: port that is not a number
        data[2],  # 4
    ]
    path = tmp_path / "conn.log"
    path.write_text("\n".join(["10.0.0.1\tno header yet", *header, *broken]) + "\n")
    rows = list(read_zeek(path))
    assert _bad(rows) == [
        (1, "data line before the #fields header"),
        (11, "expected 21 fields, got 2"),
        (12, "field 'id.resp_p': cannot read 'fifty-three' as port"),
    ]
    assert [n for n, _ in _good(rows)] == [10, 13]


def test_zeek_tsv_is_detected_without_a_telling_name(tmp_path: Path) -> None:
    path = tmp_path / "capture.txt.gz"
    path.write_bytes(gzip.compress(CONN_LOG.read_bytes()))
    assert detect_format(path) == "zeek"
    assert len(_good(list(iter_records(path)))) == 6


def test_fmt_overrides_detection(tmp_path: Path) -> None:
    path = tmp_path / "rows.dat"
    path.write_text('{"orig_bytes": 5, "resp_bytes": 6}\n')
    assert detect_format(path) == "zeek-json"
    assert _good(list(iter_records(path))) == [(1, {"bytes_transferred": 11})]
    # Read as plain JSONL: no Zeek renaming.
    assert _good(list(iter_records(path, fmt="jsonl"))) == [(1, {"orig_bytes": 5, "resp_bytes": 6})]
    with pytest.raises(ValueError, match="unknown format"):
        list(iter_records(path, fmt="xml"))


# --------------------------------------------------------------------------- mapping


def test_parse_mapping_sums_and_unset_parts() -> None:
    m = parse_mapping(["bytes_transferred=up+down", "connection_duration=dur", "tenant_id=org"])
    assert m.apply({"up": 3, "down": 4.5, "dur": 2, "org": "acme", "keep": "x"}) == {
        "keep": "x",
        "bytes_transferred": 7.5,
        "connection_duration": 2,
        "tenant_id": "acme",
    }
    assert m.apply({"up": 3})["bytes_transferred"] == 3
    assert m.apply({"down": None, "up": "5"})["bytes_transferred"] == 5
    assert "bytes_transferred" not in m.apply({"other": 1})
    assert "connection_duration" not in m.apply({"dur": None})


def test_mapping_reads_the_original_record() -> None:
    swap = parse_mapping(["a=b", "b=a"])
    assert swap.apply({"a": 1, "b": 2}) == {"a": 2, "b": 1}


@pytest.mark.parametrize("spec", ["novalue", "=a", "x=", "x=a+", "x=+b"])
def test_parse_mapping_rejects_bad_specs(spec: str) -> None:
    with pytest.raises(MappingError, match="bad mapping"):
        parse_mapping([spec])


def test_non_numeric_sum_rejects_the_line_and_tenant_overrides(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(
        '{"up": 1, "down": 2, "tenant_id": "old"}\n{"up": "lots", "down": 2}\n{"up": 4}\n'
    )
    rows = list(iter_records(path, mapping=parse_mapping(["total=up+down"]), tenant="acme"))
    assert _good(rows) == [
        (1, {"tenant_id": "acme", "total": 3}),
        (3, {"tenant_id": "acme", "total": 4}),
    ]
    assert _bad(rows) == [(2, "cannot add field 'up': 'lots' is not a number")]


def test_user_mapping_applies_after_zeek_mapping() -> None:
    extra = parse_mapping(["bytes=bytes_transferred"])
    first = _good(list(iter_records(CONN_LOG, mapping=extra)))[0][1]
    assert first["bytes"] == 1520 + 48211 and "bytes_transferred" not in first
    assert isinstance(ZEEK_MAPPING, FieldMapping) and len(ZEEK_MAPPING.rules) == 10


# --------------------------------------------------------------------------- counting


def test_count_records_for_progress(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    write_jsonl(path, generate_flows(25))
    assert count_records(path) == 25
    assert count_records(CONN_LOG) == 6
    gz = tmp_path / "a.jsonl.gz"
    write_jsonl(gz, generate_flows(25))
    assert count_records(gz) is None


# --------------------------------------------------------------------------- timestamps


def test_epoch_seconds_reads_iso_and_epoch_forms() -> None:
    moment = datetime(2024, 3, 1, 10, 0, 0, 500000, tzinfo=UTC).timestamp()
    assert epoch_seconds("2024-03-01T10:00:00.5Z") == moment
    assert epoch_seconds("2024-03-01T11:00:00.5+01:00") == moment
    assert epoch_seconds("2024-03-01T10:00:00.5") == moment  # no zone: UTC
    assert epoch_seconds(datetime(2024, 3, 1, 10, 0, 0, 500000)) == moment
    assert epoch_seconds(1709287200.123456) == 1709287200.123456
    assert epoch_seconds(" 1709287200 ") == 1709287200.0
    for nothing in (None, True, float("nan"), float("inf"), "soon", [1], {}):
        assert epoch_seconds(nothing) is None, nothing


# --------------------------------------------------------------------------- whole files


def test_load_records_keeps_good_records_and_lists_unreadable_lines(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl.gz"
    path.write_bytes(gzip.compress(BROKEN_JSONL))
    loaded = load_records(path)
    assert isinstance(loaded, LoadResult)
    assert (loaded.path, loaded.format) == (str(path), "jsonl")
    # The same records, line numbers and reasons as the streaming reader.
    assert loaded.records == [r for _, r in _good(list(iter_records(path)))]
    assert [(u.line, u.reason) for u in loaded.unreadable] == _bad(list(iter_records(path)))
    assert [u.line for u in loaded.unreadable] == [3, 4, 5, 7]
    first = loaded.unreadable[0]
    assert first == Unreadable(str(path), 3, first.reason) and first.file == str(path)
    assert loaded.unreadable[1] == (str(path), 4, "expected a JSON object, got an array")
    text = loaded.describe_unreadable(first=2)
    assert text.startswith("4 unreadable lines: line 3: malformed JSON")
    assert text.endswith("; line 4: expected a JSON object, got an array; and 2 more")
    assert "\n" not in text


def test_load_records_applies_zeek_mapping_user_mapping_and_tenant() -> None:
    loaded = load_records(
        CONN_LOG, mapping=parse_mapping(["bytes=bytes_transferred"]), tenant="acme"
    )
    assert loaded.format == "zeek" and loaded.unreadable == []
    assert len(loaded.records) == 6
    assert {r["tenant_id"] for r in loaded.records} == {"acme"}
    assert loaded.records[0]["bytes"] == 1520 + 48211
    assert loaded.records[0]["src_ip"] == "10.0.0.5"
    assert loaded.describe_unreadable() == "0 unreadable lines"


def test_load_records_format_override_and_whole_file_failure(tmp_path: Path) -> None:
    path = tmp_path / "rows.dat"
    path.write_text('{"orig_bytes": 5, "resp_bytes": 6}\n')
    assert load_records(path).records == [{"bytes_transferred": 11}]
    assert load_records(path, fmt="json").records == [{"orig_bytes": 5, "resp_bytes": 6}]
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 this is not really parquet")
    loaded = load_records(broken)
    assert loaded.records == [] and len(loaded.unreadable) == 1
    assert loaded.unreadable[0].line == 0 and "Parquet" in loaded.unreadable[0].reason
    assert loaded.describe_unreadable().startswith("1 unreadable line: line 0: cannot read Parquet")
