"""Fast restarts from the model store: a kept version scores from the scorer it proved.

A real MLflow registry (SQLite) and a real model. The first load proves the
compiled forest scorer bit-identical to ``decision_function`` and keeps its
arrays beside the version's copy; a later load (as a restart does) scores from
them, with the same scores, in a process that never imports scikit-learn or
skops. A tampered copy or a version the registry now locates elsewhere is
loaded in full again.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

from stream import registry
from stream.features import RecordColumns
from stream.generate import generate_flows
from stream.registry.loading import _Deferred
from stream.registry.model_store import PROVED_ARRAYS, PROVED_META, ModelStore
from stream.scoring.scorers import compiled_forest

_CHILD = """
import sys
import numpy as np
from stream import registry
from stream.registry.model_store import ModelStore
uri, name, version, store, data = sys.argv[1:]
m = registry.load_version(name, version, uri=uri, store=ModelStore(store))
np.save(data + ".out.npy", m.score(np.load(data)))
print(type(m.estimator).__name__, "sklearn" in sys.modules, "skops" in sys.modules)
"""


@pytest.mark.skipif(compiled_forest is None, reason="the compiled forest walk is not built here")
def test_a_kept_version_restarts_from_the_scorer_it_proved(
    tracking_uri: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    flows = list(generate_flows(1500, ("acme",), seed=3, attack_rate=0.02))
    name = "proved_" + os.urandom(3).hex()
    trained = registry.train(flows, model_name=name, uri=tracking_uri, do_promote=True)
    version = trained.version
    store = ModelStore(tmp_path / "models")
    first = registry.load_version(name, version, uri=tracking_uri, store=store)
    kept = tmp_path / "models" / name / version
    assert first.scorer.compiled and (kept / PROVED_META).is_file()
    X = first.spec.compute(RecordColumns(flows)).X
    want = first.estimator.decision_function(X)

    # A restart: the kept copy and its proved scorer, the same scores, no model load.
    with caplog.at_level(logging.DEBUG, logger="stream.registry.loading"):
        again = registry.load_version(name, version, uri=tracking_uri, store=store)
    assert "proved when kept" in caplog.text
    assert isinstance(again.estimator, _Deferred) and again.estimator._estimator is None
    assert np.array_equal(again.score(X), want)
    assert np.array_equal(again.thresholds, first.thresholds)
    assert again.spec.to_dict() == first.spec.to_dict() and again.info == first.info
    assert again.baseline is not None and again.baseline.columns == first.baseline.columns
    # A row the compiled walk hands back (a NaN) is scored by the model itself, loaded then.
    odd = X[:3].copy()
    odd[1, 0] = np.nan
    assert np.array_equal(again.score(odd), first.score(odd), equal_nan=True)
    assert again.estimator._estimator is not None

    # In a fresh process: neither scikit-learn nor skops is imported.
    data = tmp_path / "X.npy"
    np.save(data, X)
    out = subprocess.run([sys.executable, "-c", _CHILD, tracking_uri, name, version,
                          str(tmp_path / "models"), str(data)],
                         capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["_Deferred", "False", "False"], out.stdout + out.stderr
    assert np.array_equal(np.load(str(data) + ".out.npy"), want)

    # A tampered copy is not used: the version is downloaded again, served by the scorer
    # its trainer shipped (proved anew, stream.registry.shipped), and kept whole again.
    arrays = kept / PROVED_ARRAYS
    raw = bytearray(arrays.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    arrays.write_bytes(bytes(raw))
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="stream.registry.loading"):
        full = registry.load_version(name, version, uri=tracking_uri, store=store)
    assert "its trainer shipped" in caplog.text and "proved when kept" not in caplog.text
    assert np.array_equal(full.score(X), want)
    location = orjson.loads((kept / PROVED_META).read_bytes())["location"]
    assert store.proved(name, version, location) is not None
    # Nor is one kept for another location (a version number reused after a delete).
    meta = kept / PROVED_META
    doc = orjson.loads(meta.read_bytes())
    meta.write_bytes(orjson.dumps({**doc, "location": doc["location"] + "-elsewhere"}))
    assert store.proved(name, version, doc["location"]) is None
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="stream.registry.loading"):
        registry.load_version(name, version, uri=tracking_uri, store=store)
    assert "its trainer shipped" in caplog.text and "proved when kept" not in caplog.text
