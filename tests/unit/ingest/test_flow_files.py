"""Argus (binetflow) and nfdump CSV files: detected by their headers, read into the flow
event's fields with their habits undone, every other column kept; train, score and
evaluate read them like any other format.

The fixtures (tests/data/SOURCES.md) tell one capture three ways: Argus ``ra`` output
as the public binetflow captures have it, and ``nfdump -o csv`` with its short column
names (a biflow exporter: in and out counts) and its long ones (one direction).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from stream.ingest.files import count_records, detect_format, load_records

DATA = Path(__file__).resolve().parents[2] / "data"
ARGUS, NFDUMP, NFDUMP_LONG = (DATA / "flows.binetflow", DATA / "flows-nfdump.csv",
                              DATA / "flows-nfdump-long.csv")
CANONICAL = ("timestamp", "src_ip", "src_port", "dst_ip", "dst_port", "protocol",
             "connection_duration", "bytes_transferred", "packet_count")


def _canonical(r: dict[str, Any]) -> dict[str, Any]:
    return {k: r[k] for k in CANONICAL if k in r}


def test_each_is_told_by_its_header_whatever_its_name(tmp_path: Path) -> None:
    assert detect_format(ARGUS) == "argus"
    assert detect_format(NFDUMP) == "nfdump" and detect_format(NFDUMP_LONG) == "nfdump"
    for src, want in ((ARGUS, "argus"), (NFDUMP, "nfdump")):
        renamed = tmp_path / f"{want}.txt"
        shutil.copy(src, renamed)
        assert detect_format(renamed) == want
    # A plain CSV stays a plain CSV.
    plain = tmp_path / "plain.csv"
    plain.write_text("src_ip,dst_ip,bytes_transferred\n10.0.0.1,10.0.0.2,5\n")
    assert detect_format(plain) == "csv"


def test_argus_and_nfdump_give_the_same_canonical_records() -> None:
    argus = load_records(ARGUS)
    nfdump = load_records(NFDUMP)
    assert (argus.format, nfdump.format) == ("argus", "nfdump")
    # The nfdump summary block is not a record; Argus's ARP flow is one nfdump never sees.
    assert len(nfdump.records) == 5 and not nfdump.unreadable
    flows = [r for r in argus.records if r["protocol"] != "arp"]
    assert len(flows) == 5
    for a, n in zip(flows, nfdump.records, strict=True):
        if a["protocol"] == "icmp":
            # Each tool's own ICMP encoding, read as an integer, not translated:
            # Argus's hex columns, nfdump's type.code as type * 256 + code (echo: 8.0).
            assert (a["src_port"], a["dst_port"]) == (0x0008, 0x6D9E)
            assert (n["src_port"], n["dst_port"]) == (0, 8 * 256)
            a = {k: v for k, v in a.items() if not k.endswith("_port")}
            n = {k: v for k, v in n.items() if not k.endswith("_port")}
        assert _canonical(a) == _canonical(n)
    first = flows[0]
    assert _canonical(first) == {
        "timestamp": 1709287200.123, "src_ip": "10.1.0.15", "src_port": 49152,
        "dst_ip": "203.0.113.34", "dst_port": 443, "protocol": "tcp",
        "connection_duration": 1.204, "bytes_transferred": 53063, "packet_count": 64,
    }


def test_every_other_column_is_kept_under_its_own_name() -> None:
    argus = load_records(ARGUS).records
    assert {"State", "Dir", "sTos", "dTos", "SrcBytes", "Label"} <= argus[0].keys()
    assert argus[0]["Dir"] == "->" and argus[0]["State"] == "FSPA_FSPA"
    assert argus[0]["Label"] == "flow=Normal-TLS" and argus[0]["SrcBytes"] == 2772
    # What was read into a field is not kept twice.
    assert not {"StartTime", "Dur", "SrcAddr", "Sport", "TotBytes"} & argus[0].keys()
    nfdump = load_records(NFDUMP).records
    assert nfdump[0]["flg"] == ".AP.SF" and nfdump[0]["te"] == "2024-03-01 10:00:01.327"
    assert not {"ts", "sa", "ibyt", "obyt"} & nfdump[0].keys()


def test_argus_habits_arp_without_ports_and_a_time_without_a_date() -> None:
    loaded = load_records(ARGUS)
    (arp,) = [r for r in loaded.records if r["protocol"] == "arp"]
    assert "src_port" not in arp and "dst_port" not in arp and arp["Dir"] == "who"
    assert arp["src_ip"] == "10.1.0.1" and arp["packet_count"] == 1
    # The last line carries a time of day only: refused with the way out, never guessed.
    (bad,) = loaded.unreadable
    assert bad.line == 8 and "has no date" in bad.reason and "ra -u" in bad.reason
    assert count_records(ARGUS) == 7


def test_nfdump_long_names_protocol_numbers_and_one_direction() -> None:
    long = load_records(NFDUMP_LONG).records
    short = load_records(NFDUMP).records
    assert [r["protocol"] for r in long] == ["tcp", "udp", "tcp", "icmp", "tcp"]
    for lr, sr in zip(long, short, strict=True):
        assert {k: lr[k] for k in ("timestamp", "src_ip", "dst_ip", "dst_port")} == \
            {k: sr[k] for k in ("timestamp", "src_ip", "dst_ip", "dst_port")}
    # ``packets`` and ``bytes`` are nfdump's input direction (the short form's ipkt, ibyt).
    assert [r["packet_count"] for r in long] == [24, 1, 1, 1, 400]
    assert [r["bytes_transferred"] for r in long] == [2772, 66, 60, 84, 25000]
    assert long[0]["flows"] == 1


def test_a_bad_cell_is_one_unreadable_line(tmp_path: Path) -> None:
    text = ARGUS.read_text().splitlines()
    text[2] = text[2].replace(",53012,", ",port53,")
    path = tmp_path / "bad.binetflow"
    path.write_text("\n".join(text) + "\n")
    loaded = load_records(path)
    assert len(loaded.records) == 5
    assert any("Sport 'port53' is not a port" in u.reason for u in loaded.unreadable)


