"""Named feature specs that ship with the tool: ``stream train --recipe NAME``.

``flows`` is the default recipe for flow records in the canonical fields (the
native events, or any sensor schema mapped to them). Per flow: log sizes and
duration with unset values filled (Zeek leaves ``duration`` and the byte
counts unset on refused and scanning connections), bytes per packet and packets
per second. Over time, per tenant:

* per source: distinct destination ports in 2 s (a port scan touches many);
* per destination: distinct sources in 2 s (a DDoS has many);
* per source>destination pair: flows in 5 s, and the regularity of their gaps
  (the log of the gaps' coefficient of variation; beacons repeat on a clock). The
  mean gap is floored at a millisecond: flows of one pair that share a timestamp
  have gaps of 0, and their ratio must still be a number (0: perfectly regular).

The spans suit the demo's traffic (about 1,000 flows per second). For a
quieter network, longer spans see the same shapes; copy the recipe into a
``--feature-file`` and change them.
"""

from __future__ import annotations

from typing import Final

from stream.features.spec import FeatureSpec

RECIPES: Final[dict[str, tuple[tuple[str, str], ...]]] = {
    "flows": (
        ("log_bytes", "log1p(fill(bytes_transferred, 0))"),
        ("log_packets", "log1p(fill(packet_count, 0))"),
        ("log_duration_ms", "log1p(fill(connection_duration, 0) * 1000)"),
        ("bytes_per_packet", "log1p(fill(bytes_transferred, 0) / max(fill(packet_count, 0), 1))"),
        ("packets_per_s", "log1p(fill(packet_count, 0) / (fill(connection_duration, 0) + 0.01))"),
        ("src_ports", "log1p(distinct(dst_port, by=src_ip, window=2s))"),
        ("dst_sources", "log1p(distinct(src_ip, by=dst_ip, window=2s))"),
        ("pair_flows", "log1p(count(by=src_ip>dst_ip, window=5s))"),
        (
            "pair_regularity",
            "log(interval_std(by=src_ip>dst_ip, window=5s)"
            " / max(interval_mean(by=src_ip>dst_ip, window=5s), 0.001) + 0.05)",
        ),
    ),
}


def recipe(name: str) -> FeatureSpec:
    """The named recipe as an unfitted spec; KeyError naming the known ones."""
    try:
        items = RECIPES[name]
    except KeyError:
        raise KeyError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}") from None
    return FeatureSpec.parse(items)
