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
    "network": (
        # Per flow: sizes and duration, every one filled (ICMP, ARP and scans leave them
        # unset).
        ("log_bytes", "log1p(fill(bytes_transferred, 0))"),
        ("log_packets", "log1p(fill(packet_count, 0))"),
        ("log_duration_ms", "log1p(fill(connection_duration, 0) * 1000)"),
        ("bytes_per_packet", "log1p(fill(bytes_transferred, 0) / max(fill(packet_count, 0), 1))"),
        # Rarity in the baseline, in nats: what the tenant's hosts never do.
        ("rare_port", 'rarity(protocol, fill(dst_port, "none"))'),
        ("rare_dst", "rarity(dst_ip)"),
        ("rare_service", 'rarity(dst_ip, protocol, fill(dst_port, "none"))'),
        ("rare_src", "rarity(src_ip)"),
        ("rare_src_port", 'rarity(src_ip, protocol, fill(dst_port, "none"))'),
        ("rare_state", 'rarity(optional(conn_state, "none"))'),
        ("rare_app", 'rarity(optional(service, "none"))'),
        # Behaviour in the stream, spans in event time (not tied to the traffic's rate).
        ("pair_novelty", "log1p(since(by=src_ip>dst_ip, window=1d) / 60)"),
        # Fan-out and fan-in over a host's last 32 flows (not its last minutes: the same
        # at any traffic rate, and not growing with how long a host has been busy).
        ("src_port_spread", 'spread(fill(dst_port, "none"), by=src_ip, window=10m)'),
        ("src_dst_spread", "spread(dst_ip, by=src_ip, window=10m)"),
        ("dst_src_spread", "spread(src_ip, by=dst_ip, window=10m)"),
        ("pair_beacon", "beacon(fill(bytes_transferred, 0), by=src_ip>dst_ip, window=1h)"),
    ),
}


#: The recipe `stream train` and the demo use when none is named.
DEFAULT_RECIPE: Final = "network"


def recipe(name: str) -> FeatureSpec:
    """The named recipe as an unfitted spec; KeyError naming the known ones."""
    try:
        items = RECIPES[name]
    except KeyError:
        raise KeyError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}") from None
    return FeatureSpec.parse(items)
