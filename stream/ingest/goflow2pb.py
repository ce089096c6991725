"""goflow2's protobuf (``-format=bin``) as the records its JSON output (``-format=json``) has.

goflow2 writes each flow as a ``FlowMessage`` with a varint length in front
(``protodelim``): one per Kafka record with its Kafka transport, one after another with
its file transport. :func:`record` turns one message into the dict goflow2's JSON
formatter would print for it (its default renderers: addresses as text, ``proto`` and
``etype`` by name, MACs as ``aa:bb:...``, ``type`` as its enum name, every field, zeros
included), so the ``goflow2`` sensor schema reads both the same way and a flow scores
the same whichever format carried it.

The message type is built from ``goflow2.proto`` beside this module (our own
declaration of the fields we read, with goflow2's field numbers and types) with the
protobuf package's descriptor pool: no generated code and no ``protoc``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any, Final

import orjson

__all__ = ["PROTO", "as_json", "delimited", "encode", "message_class", "record"]

PROTO: Final = Path(__file__).with_name("goflow2.proto")

# goflow2's default renderers (producer/proto/render.go).
_PROTO_NAMES: Final = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6", 132: "SCTP"}
_ETYPE_NAMES: Final = {0x806: "ARP", 0x800: "IPv4", 0x86DD: "IPv6"}
_IP_FIELDS: Final = frozenset({"sampler_address", "src_addr", "dst_addr", "next_hop"})
_MAC_FIELDS: Final = frozenset({"src_mac", "dst_mac"})
#: A message longer than this is refused before it is parsed (goflow2's are < 1 KiB).
MAX_MESSAGE: Final = 1 << 20

_FIELD = re.compile(r"^\s*(\w+)\s+(\w+)\s*=\s*(\d+)\s*;")
_ENUM_VALUE = re.compile(r"^\s*(\w+)\s*=\s*(\d+)\s*;")


@cache
def message_class() -> Any:
    """The ``FlowMessage`` class, built from ``goflow2.proto``."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    types = {
        "uint32": descriptor_pb2.FieldDescriptorProto.TYPE_UINT32,
        "uint64": descriptor_pb2.FieldDescriptorProto.TYPE_UINT64,
        "bytes": descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
    }
    file = descriptor_pb2.FileDescriptorProto(name="stream_goflow2.proto", package="flowpb",
                                              syntax="proto3")
    msg = file.message_type.add(name="FlowMessage")
    enum = None
    for line in PROTO.read_text().splitlines():
        line = line.split("//", 1)[0]
        if not line.strip():
            continue
        if line.strip().startswith("enum "):
            enum = msg.enum_type.add(name=line.split()[1])
            continue
        if enum is not None:
            if line.strip() == "}":
                enum = None
                continue
            m = _ENUM_VALUE.match(line)
            if m:
                enum.value.add(name=m[1], number=int(m[2]))
            continue
        m = _FIELD.match(line)
        if m is None or m[1] == "syntax":
            continue
        kind, name, number = m[1], m[2], int(m[3])
        field = msg.field.add(name=name, number=number,
                              label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
        if kind in types:
            field.type = types[kind]
        else:  # an enum declared above
            field.type = descriptor_pb2.FieldDescriptorProto.TYPE_ENUM
            field.type_name = f".flowpb.FlowMessage.{kind}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("flowpb.FlowMessage"))


def _varint(data: bytes | memoryview, at: int) -> tuple[int, int]:
    """(value, position after it) of the varint at ``at``; ValueError when cut short."""
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise ValueError("length prefix cut short")
        b = data[at]
        at += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, at
        shift += 7


def _render(name: str, value: Any, msg: Any) -> Any:
    if name in _IP_FIELDS:
        return str(ipaddress.ip_address(value)) if len(value) in (4, 16) else ""
    if name in _MAC_FIELDS:
        return ":".join(f"{b:02x}" for b in value.to_bytes(8, "big")[2:])
    if name == "proto":
        return _PROTO_NAMES.get(value, "")
    if name == "etype":
        return _ETYPE_NAMES.get(value, "")
    if name in ("src_net", "dst_net"):
        addr = msg.src_addr if name == "src_net" else msg.dst_addr
        if len(addr) not in (4, 16):
            return "unknown"
        net = ipaddress.ip_network((ipaddress.ip_address(addr), value), strict=False)
        return str(net)
    if isinstance(value, bytes):
        return value.hex()
    return value


def record(data: bytes) -> dict[str, Any]:
    """One message (with or without goflow2's length prefix) as goflow2's JSON has it;
    ValueError saying what is wrong with it."""
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"message of {len(data):,} bytes (more than {MAX_MESSAGE:,})")
    body: bytes | memoryview = data
    try:
        size, at = _varint(data, 0)
        if at + size == len(data):
            body = memoryview(data)[at:]
    except ValueError:
        pass  # not prefixed: the message alone
    cls = message_class()
    msg = cls()
    try:
        msg.ParseFromString(bytes(body))
    except Exception as e:  # protobuf's DecodeError, whatever its module
        raise ValueError(f"not a goflow2 FlowMessage: {e}") from None
    out: dict[str, Any] = {}
    for field in cls.DESCRIPTOR.fields:
        value = getattr(msg, field.name)
        if field.enum_type is not None:
            value = field.enum_type.values_by_number.get(value)
            out[field.name] = value.name if value is not None else ""
            continue
        try:
            out[field.name] = _render(field.name, value, msg)
        except ValueError:
            out[field.name] = "unknown"
    return out


def encode(rec: dict[str, Any]) -> bytes:
    """A record as goflow2's JSON has it, back to the message goflow2 ``-format=bin``
    writes (with its varint length): what ``stream replay`` sends for a ``.pb`` file.
    Fields the message does not declare are left out; a rendering it cannot read back
    (an address that is not one) is a ValueError."""
    cls = message_class()
    fields = cls.DESCRIPTOR.fields_by_name
    msg = cls()
    protos = {v: k for k, v in _PROTO_NAMES.items()}
    etypes = {v: k for k, v in _ETYPE_NAMES.items()}
    for name, value in rec.items():
        field = fields.get(name)
        if field is None or value in ("", None):
            continue
        if name in _IP_FIELDS:
            value = ipaddress.ip_address(value).packed
        elif name in _MAC_FIELDS:
            value = int(str(value).replace(":", ""), 16)
        elif name == "proto":
            value = protos.get(value, 0) if isinstance(value, str) else int(value)
        elif name == "etype":
            value = etypes.get(value, 0) if isinstance(value, str) else int(value)
        elif field.enum_type is not None:
            known = field.enum_type.values_by_name.get(value)
            value = known.number if known is not None else 0
        elif name in ("src_net", "dst_net"):
            value = int(str(value).rsplit("/", 1)[-1]) if "/" in str(value) else 0
        try:
            setattr(msg, name, value)
        except (TypeError, ValueError) as e:
            raise ValueError(f"field {name!r}: {e}") from None
    body = msg.SerializeToString()
    size, prefix = len(body), bytearray()
    while True:  # the varint length protodelim writes in front
        b = size & 0x7F
        size >>= 7
        prefix.append(b | (0x80 if size else 0))
        if not size:
            return bytes(prefix) + body


def delimited(stream: bytes) -> Iterator[tuple[int, bytes | None, str | None]]:
    """The messages of a length-delimited stream: (index from 1, message, None), or
    (index, None, reason) for a cut or oversize one, which ends the stream."""
    at, k = 0, 0
    view = memoryview(stream)
    while at < len(stream):
        k += 1
        try:
            size, body = _varint(view, at)
        except ValueError as e:
            yield k, None, str(e)
            return
        if size > MAX_MESSAGE:
            yield k, None, f"message of {size:,} bytes (more than {MAX_MESSAGE:,})"
            return
        if body + size > len(stream):
            yield k, None, f"message cut short: {len(stream) - body} of {size} bytes"
            return
        yield k, bytes(view[body:body + size]), None
        at = body + size


def as_json(values: Sequence[bytes | None]) -> tuple[list[bytes | None], dict[int, str]]:
    """Kafka record values written by goflow2 ``-format=bin`` as the JSON its
    ``-format=json`` writes; the rows that are not a FlowMessage, with the reason."""
    out: list[bytes | None] = []
    bad: dict[int, str] = {}
    for i, v in enumerate(values):
        if not v:
            out.append(v)  # the decoder's own empty_message
            continue
        try:
            out.append(orjson.dumps(record(v)))
        except ValueError as e:
            out.append(None)
            bad[i] = str(e)[:300]
    return out, bad
