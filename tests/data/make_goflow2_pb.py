"""Write goflow2.pb: the flows of goflow2.jsonl as goflow2 -format=bin -transport=file
writes them (each FlowMessage with a varint length in front), with the field numbers
and types of goflow2's pb/flow.proto (stream/sources/goflow2.proto declares them).

Run from the repository: python tests/data/make_goflow2_pb.py
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

from stream.sources.goflow2pb import message_class

HERE = Path(__file__).parent
PROTO = {"ICMP": 1, "TCP": 6, "UDP": 17, "ICMPv6": 58, "SCTP": 132}
ETYPE = {"ARP": 0x806, "IPv4": 0x800, "IPv6": 0x86DD}


def message(rec: dict) -> bytes:
    cls = message_class()
    msg = cls()
    for name, value in rec.items():
        if name in ("src_addr", "dst_addr", "sampler_address", "next_hop"):
            value = ipaddress.ip_address(value).packed
        elif name in ("src_mac", "dst_mac"):
            value = int(value.replace(":", ""), 16)
        elif name == "proto":
            value = PROTO[value]
        elif name == "etype":
            value = ETYPE[value]
        elif name == "type":
            value = cls.DESCRIPTOR.fields_by_name["type"].enum_type.values_by_name[value].number
        setattr(msg, name, value)
    body = msg.SerializeToString()
    size, prefix = len(body), b""
    while True:  # the varint length protodelim writes in front
        b = size & 0x7F
        size >>= 7
        prefix += bytes([b | (0x80 if size else 0)])
        if not size:
            return prefix + body


if __name__ == "__main__":
    records = [json.loads(line) for line in (HERE / "goflow2.jsonl").read_text().splitlines()]
    (HERE / "goflow2.pb").write_bytes(b"".join(message(r) for r in records))
