#!/usr/bin/env bash
# Creates the consumer's topics and grows their partition counts to the configured
# numbers. Safe to re-run: the compose stack runs it on every `up`.
set -euo pipefail

KAFKA_BIN="${KAFKA_BIN:-/opt/kafka/bin}"
BOOTSTRAP="${KAFKA_BOOTSTRAP_SERVERS:-kafka:9092}"
REPLICATION="${TOPIC_REPLICATION_FACTOR:-1}"
# Dead letters are inspected by people, often days later: keep them longer.
DLQ_RETENTION_MS="${DLQ_RETENTION_MS:-1209600000}"

topics() {
    "$KAFKA_BIN/kafka-topics.sh" --bootstrap-server "$BOOTSTRAP" "$@"
}

# ensure_topic NAME PARTITIONS [--config key=value ...]
ensure_topic() {
    local name="$1" partitions="$2" current
    shift 2
    topics --create --if-not-exists --topic "$name" --partitions "$partitions" \
        --replication-factor "$REPLICATION" "$@"
    current="$(topics --describe --topic "$name" \
        | sed -n 's/.*PartitionCount:[[:space:]]*\([0-9][0-9]*\).*/\1/p' | head -n 1)"
    if [ -z "$current" ]; then
        echo "cannot read the partition count of topic $name" >&2
        return 1
    fi
    # --if-not-exists leaves an existing topic alone, so a raised setting needs --alter.
    if [ "$current" -lt "$partitions" ]; then
        topics --alter --topic "$name" --partitions "$partitions"
        current="$partitions"
    elif [ "$current" -gt "$partitions" ]; then
        echo "warning: topic $name has $current partitions, more than the configured" \
            "$partitions; Kafka cannot remove partitions, leaving it as is" >&2
    fi
    echo "topic $name ready with $current partitions"
}

ensure_topic "${STREAM_INPUT_TOPIC:-flows}" "${FLOWS_PARTITIONS:-6}"
ensure_topic "${STREAM_ALERT_TOPIC:-alerts}" "${ALERTS_PARTITIONS:-6}"
ensure_topic "${STREAM_DLQ_TOPIC:-flows.dlq}" "${DLQ_PARTITIONS:-1}" \
    --config "retention.ms=$DLQ_RETENTION_MS"
if [ -n "${STREAM_SHADOW_TOPIC:-}" ]; then
    ensure_topic "$STREAM_SHADOW_TOPIC" 1
fi
if [ -n "${STREAM_DRIFT_TOPIC:-}" ]; then
    ensure_topic "$STREAM_DRIFT_TOPIC" 1
fi
