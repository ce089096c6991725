"""Measures what overlapping Kafka I/O with scoring would gain, before anyone changes the loop.

Two minimal consumer loops over the same backlog on the embedded broker, with
the consumer's own Kafka settings, model table and ``process_batch``:

- serial: consume a batch, score it, produce its alerts, wait for every
  acknowledgement, commit synchronously, then consume the next one (what
  ``stream run`` does today);
- overlapped: a scoring thread works on batch k while the loop consumes batch
  k+1, and a batch's offsets are committed (asynchronously) once its alerts
  are acknowledged instead of waiting for them before the next consume.

Run: ``python -m bench.overlap_probe`` (about a minute). It is a probe for a
proposed pipeline change, not a second implementation of the consumer: it
ignores rebalances, dead letters and exactly-once delivery.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
from confluent_kafka import Consumer, Message, Producer, TopicPartition

from bench import workload
from bench.broker import PARTITIONS, produce_all
from bench.offline import table_for
from stream.config import Settings
from stream.consumer.batch import process_batch
from stream.kafka import clients as kafka_clients
from stream.kafka.embedded import EmbeddedBroker
from stream.registry import registered_name


def _arrays(msgs: list[Message]) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    values = [m.value() for m in msgs]
    partitions = np.fromiter((m.partition() for m in msgs), dtype=np.int64, count=len(msgs))
    offsets = np.fromiter((m.offset() for m in msgs), dtype=np.int64, count=len(msgs))
    return values, partitions, offsets  # type: ignore[return-value]


def _next_offsets(topic: str, partitions: np.ndarray, offsets: np.ndarray) -> list[TopicPartition]:
    return [TopicPartition(topic, int(p), int(offsets[partitions == p].max()) + 1)
            for p in np.unique(partitions).tolist()]


def _clients(s: Settings) -> tuple[Consumer, Producer]:
    consumer = Consumer(kafka_clients.consumer_config(s))
    consumer.subscribe([s.input_topic])
    return consumer, Producer(kafka_clients.producer_config(s))


def serial(s: Settings, resolve: Callable[..., Any], total: int) -> float:
    consumer, producer = _clients(s)
    done, t0 = 0, 0.0
    while done < total:
        msgs = [m for m in consumer.consume(s.batch_size, s.batch_max_wait_ms / 1000)
                if m.error() is None]
        if not msgs:
            continue
        t0 = t0 or time.perf_counter()
        values, partitions, offsets = _arrays(msgs)
        out = process_batch(values, resolve, topic=s.input_topic, partitions=partitions,
                            offsets=offsets, min_level=1)
        for i, alert in zip(out.alert_rows.tolist(), out.alerts, strict=True):
            producer.produce(s.alert_topic, alert, key=out.decoded.tenants[i])
        producer.flush(60)
        consumer.commit(offsets=_next_offsets(s.input_topic, partitions, offsets),
                        asynchronous=False)
        done += len(msgs)
    elapsed = time.perf_counter() - t0
    consumer.close()
    return total / elapsed


def overlapped(s: Settings, resolve: Callable[..., Any], total: int) -> float:
    consumer, producer = _clients(s)
    scorer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="score")
    pending: list[tuple[list[int], list[TopicPartition]]] = []  # ([unacked], offsets)

    def settle(block: bool) -> None:
        # Commit, oldest first, every batch whose alerts are all acknowledged.
        producer.poll(0)
        while pending and pending[0][0][0] == 0:
            consumer.commit(offsets=pending.pop(0)[1], asynchronous=not block)
        while block and pending:
            producer.poll(0.05)
            while pending and pending[0][0][0] == 0:
                consumer.commit(offsets=pending.pop(0)[1], asynchronous=False)

    def deliver(out: Any, partitions: np.ndarray, offsets: np.ndarray) -> None:
        unacked = [len(out.alerts)]

        def acked(_err: Any, _msg: Any) -> None:
            unacked[0] -= 1

        for i, alert in zip(out.alert_rows.tolist(), out.alerts, strict=True):
            producer.produce(s.alert_topic, alert, key=out.decoded.tenants[i], on_delivery=acked)
        pending.append((unacked, _next_offsets(s.input_topic, partitions, offsets)))

    done, t0 = 0, 0.0
    scoring: Future[Any] | None = None
    prev: tuple[np.ndarray, np.ndarray] | None = None
    while done < total:
        # The next batch is fetched (the GIL is released while librdkafka waits) while
        # the scoring thread works on the previous one; Kafka calls stay on this thread.
        msgs = [m for m in consumer.consume(s.batch_size, s.batch_max_wait_ms / 1000)
                if m.error() is None]
        if scoring is not None and prev is not None:
            out = scoring.result()
            deliver(out, *prev)
            settle(block=False)
            done += out.n
            scoring = prev = None
        if msgs:
            t0 = t0 or time.perf_counter()
            values, partitions, offsets = _arrays(msgs)
            scoring = scorer.submit(process_batch, values, resolve, topic=s.input_topic,
                                    partitions=partitions, offsets=offsets, min_level=1)
            prev = (partitions, offsets)
    settle(block=True)
    elapsed = time.perf_counter() - t0
    scorer.shutdown()
    consumer.close()
    return total / elapsed


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.overlap_probe", description=__doc__)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    wl = workload.build(args.events)
    models = {registered_name(workload.BASE_NAME, t): wl.loaded_model(
        t, workload.copy_estimator(wl.estimator)) for t in workload.TENANTS}
    table = table_for(models)
    results: dict[str, list[float]] = {"serial": [], "overlapped": []}
    with EmbeddedBroker() as broker:
        for r in range(args.repeats):
            for name, loop in (("serial", serial), ("overlapped", overlapped)):
                topic = f"flows-{name}-{r}"
                broker.create_topics([topic], partitions=PARTITIONS)
                broker.create_topics([f"alerts-{name}-{r}"], partitions=2)
                produce_all(broker.bootstrap, topic, wl.values)
                s = Settings(bootstrap_servers=broker.bootstrap, input_topic=topic,
                             alert_topic=f"alerts-{name}-{r}", group_id=f"g-{name}-{r}",
                             session_timeout_ms=6000)
                results[name].append(loop(s, table.resolve, len(wl.values)))
                print(f"{name:>10}: {results[name][-1]:,.0f} events/s", flush=True)
    table.stop()
    a, b = np.median(results["serial"]), np.median(results["overlapped"])
    print(f"median serial {a:,.0f} events/s, overlapped {b:,.0f} events/s: x{b / a:.2f}")


if __name__ == "__main__":
    main()
