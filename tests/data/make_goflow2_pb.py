"""Write goflow2.pb: the flows of goflow2.jsonl as goflow2 -format=bin -transport=file
writes them (each FlowMessage with a varint length in front), with the field numbers
and types of goflow2's pb/flow.proto (stream/ingest/files/goflow2.proto declares them).

Run from the repository: python tests/data/make_goflow2_pb.py
"""

from __future__ import annotations

import json
from pathlib import Path

from stream.ingest.goflow2pb import encode as message

HERE = Path(__file__).parent


if __name__ == "__main__":
    records = [json.loads(line) for line in (HERE / "goflow2.jsonl").read_text().splitlines()]
    (HERE / "goflow2.pb").write_bytes(b"".join(message(r) for r in records))
