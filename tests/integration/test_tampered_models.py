"""Models as untrusted input: a tampered version is refused with its reason, never crashes or
hangs the consumer, and the version before keeps serving.

The registry and the artifact store are a trust boundary. Here, on a real SQLite
registry, the files of a version are edited as someone with write access to the
artifact store would: the shipped scorer's arrays walked out of bounds (a path-term
array of one value for every node, depths in the billions, 10M nodes), the arrays
altered consistently with a recomputed proof and JSON hashes (only the registry's own
record of the hashes tells them apart), and the model file replaced. Each is refused
with a logged reason: the scorer falls back to the model itself, or the version to the
one serving before.
"""

from __future__ import annotations

import io
import logging
import os
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import orjson
import pytest

from stream import registry
from stream.features import RecordColumns
from stream.generate import generate_flows, training_flows
from stream.models.table import ModelTable
from stream.registry import shipped
from stream.registry.loading import _Deferred, load_directory
from stream.scoring.scorers import compiled_forest

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(compiled_forest is None, reason="no compiled forest walk")]


def _files(uri: str, name: str, version: str) -> Path:
    """The version's model directory in the (local) artifact store."""
    c = registry.client(uri)
    location = c.get_model_version_download_uri(name, version)
    if location.startswith("models:/"):
        location = c.get_logged_model(location.split("/")[1]).artifact_location
    return Path(urlparse(location).path)


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path / shipped.ARRAYS, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _write(path: Path, parts: dict[str, np.ndarray], *, rehash: bool = True) -> None:
    buf = io.BytesIO()
    np.savez(buf, **parts)
    data = buf.getvalue()
    (path / shipped.ARRAYS).write_bytes(data)
    if rehash:  # what a careful attacker does: the JSON's hash matches the new file
        meta = orjson.loads((path / shipped.META).read_bytes())
        (path / shipped.META).write_bytes(orjson.dumps({**meta,
                                                        "arrays_sha256": shipped._sha256(data)}))


@pytest.fixture
def version(tracking_uri: str) -> tuple[str, list[dict]]:
    name = "tamper_" + os.urandom(3).hex()
    flows = training_flows("acme", 800, seed=3)
    registry.train(flows, model_name=name, uri=tracking_uri, n_estimators=30, do_promote=True)
    return name, flows


@pytest.mark.parametrize("damage", ["term", "depths", "nodes"])
def test_arrays_out_of_bounds_are_refused_before_the_walk(
    tracking_uri: str, version: tuple[str, list[dict]], damage: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    name, flows = version
    path = _files(tracking_uri, name, "1")
    parts = _arrays(path)
    if damage == "term":  # 10M nodes walked with one path term: reads far past its end
        n = 10_000_000
        nodes = np.zeros((n, 16), dtype=np.uint8)
        parts = {**parts, "nodes": nodes, "term": np.zeros(1)}
    elif damage == "depths":  # billions of steps per row
        parts = {**parts, "depths": np.full(len(parts["depths"]), 2**30, dtype=np.int32)}
    else:  # a child index past the last node
        nodes = parts["nodes"].copy()
        nodes.view(np.int32)[:, 2] = len(nodes) + 5
        parts = {**parts, "nodes": nodes}
    _write(path, parts)
    t0 = time.monotonic()
    with caplog.at_level(logging.INFO):
        model = registry.load_version(name, "1", uri=tracking_uri)
    took = time.monotonic() - t0
    assert took < 20, took
    # Not served from the tampered arrays (the registry's hashes do not match them), and
    # had they been, the bounds checks refuse them: the model itself scores.
    assert not isinstance(model.estimator, _Deferred)
    assert "not the ones the registry holds" in caplog.text, caplog.text
    X = model.spec.compute(RecordColumns(flows)).X
    assert np.array_equal(model.score(X), model.estimator.decision_function(X))
    # The bounds checks alone, without the registry's hashes: refused with the reason.
    from stream.scoring.scorers import compiled_scorer

    proof = {k: v for k, v in parts.items() if not k.startswith("proof_")}
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stream.scoring.scorers"):
        assert compiled_scorer(proof, lambda: None) is None
    assert "compiled forest arrays refused" in caplog.text


def test_consistently_altered_arrays_are_told_apart_by_the_registry(
    tracking_uri: str, version: tuple[str, list[dict]], caplog: pytest.LogCaptureFixture,
) -> None:
    """Thresholds moved in every leaf's term, proof rows rescored with the altered walk,
    the JSON's hash redone: the files agree with each other, not with the registry."""
    from stream.scoring.scorers import compiled_scorer

    name, flows = version
    path = _files(tracking_uri, name, "1")
    parts = _arrays(path)
    forged = {k: v for k, v in parts.items() if not k.startswith("proof_")}
    forged["term"] = forged["term"] + 50.0  # every path longer: nothing looks anomalous
    walk = compiled_scorer(forged, lambda: None)
    assert walk is not None
    _write(path, {**forged, "proof_X": parts["proof_X"],
                  "proof_scores": walk(parts["proof_X"])})
    with caplog.at_level(logging.INFO):
        model = registry.load_version(name, "1", uri=tracking_uri)
    assert "not the ones the registry holds" in caplog.text, caplog.text
    X = model.spec.compute(RecordColumns(flows)).X
    want = load_directory(path, name, "1").estimator.decision_function(X)
    assert np.array_equal(model.score(X), want)
    assert not np.array_equal(walk(X), want)  # what the forged arrays would have said


def test_a_replaced_model_file_is_refused_and_the_version_before_keeps_serving(
    tracking_uri: str, caplog: pytest.LogCaptureFixture,
) -> None:
    name = "tamper_" + os.urandom(3).hex()
    flows = training_flows("acme", 800, seed=3)
    registry.train(flows, model_name=name, uri=tracking_uri, n_estimators=30, do_promote=True)
    table = ModelTable(name, poller=lambda: registry.poll(name, uri=tracking_uri),
                       loader=lambda n, v: registry.load_version(n, v, uri=tracking_uri),
                       uri=tracking_uri)
    table.refresh()
    assert table.loaded() == {name: "1"}
    registry.train(flows, model_name=name, uri=tracking_uri, n_estimators=30)
    path = _files(tracking_uri, name, "2")
    (path / "model.skops").write_bytes(b"PK\x03\x04" + os.urandom(4000))
    (path / shipped.ARRAYS).write_bytes(os.urandom(2000))
    registry.promote(name, "2", uri=tracking_uri)
    with caplog.at_level(logging.WARNING):
        table.refresh()
    assert table.loaded() == {name: "1"}  # v1 keeps serving
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refused and f"{name} v2 refused" in refused[0], caplog.text
    events = list(generate_flows(20, ("acme",), seed=2))
    model = table.resolve(["acme"])[0]
    assert model is not None and getattr(model, "version", None) == "1"
    assert np.isfinite(model.score(model.spec.compute(RecordColumns(events)).X)).all()
    table.stop()
