"""A first start without scikit-learn: the scorer the trainer proved ships with the version.

A real MLflow registry (SQLite) and real models. ``stream train`` logs the proved
compiled scorer and its proof rows into the version's model directory; a
consumer that downloads the version proves it again on those rows and serves
it, with scores identical to ``decision_function``, in a process that never
imports scikit-learn or skops. Arrays, proof or model file that do not match
are refused with a log line and the model is loaded the usual way; a detector
without a compiled scorer ships nothing.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import orjson
import pytest

from stream import registry
from stream.features import RecordColumns
from stream.generate import generate_flows
from stream.registry import shipped
from stream.registry.loading import ModelLoadError, _Deferred, load_directory, load_shipped
from stream.scoring.scorers import compiled_forest

pytestmark = pytest.mark.skipif(compiled_forest is None,
                                reason="the compiled forest walk is not built here")

_CHILD = """
import sys
import numpy as np
from stream import registry
uri, name, version, data = sys.argv[1:]
m = registry.load_version(name, version, uri=uri)
np.save(data + ".out.npy", m.score(np.load(data)))
print(type(m.estimator).__name__, "sklearn" in sys.modules, "skops" in sys.modules)
"""


@pytest.fixture(scope="module")
def trained(tracking_uri: str) -> tuple[str, str, list[dict]]:
    flows = list(generate_flows(1500, ("acme",), seed=4, attack_rate=0.02))
    name = "shipped_" + os.urandom(3).hex()
    res = registry.train(flows, model_name=name, uri=tracking_uri, do_promote=True)
    return name, res.version, flows


def _download(tracking_uri: str, name: str, version: str, dest: Path) -> Path:
    location = registry.client(tracking_uri).get_model_version_download_uri(name, version)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(dest),
                                                   tracking_uri=tracking_uri))


def test_a_first_start_scores_from_the_shipped_scorer_without_sklearn(
    tracking_uri: str, trained: tuple[str, str, list[dict]], tmp_path: Path
) -> None:
    name, version, flows = trained
    local = _download(tracking_uri, name, version, tmp_path / "dl")
    assert (local / shipped.ARRAYS).is_file() and (local / shipped.META).is_file()
    full = load_directory(local, name, version)
    X = full.spec.compute(RecordColumns(flows)).X
    want = full.estimator.decision_function(X)

    temp = Path(tempfile.gettempdir())
    before = set(temp.glob("stream-model-*"))
    served = registry.load_version(name, version, uri=tracking_uri)
    assert isinstance(served.estimator, _Deferred) and served.estimator._estimator is None
    # The download is not kept meanwhile (256 cached tenant models would hold their files).
    assert set(temp.glob("stream-model-*")) == before
    assert np.array_equal(served.score(X), want)
    assert np.array_equal(served.thresholds, full.thresholds) and served.info == full.info
    assert served.baseline is not None and served.spec.to_dict() == full.spec.to_dict()
    # A NaN row, which the compiled walk hands back, is scored by the model, downloaded
    # and loaded then.
    odd = X[:3].copy()
    odd[2, 1] = np.nan
    assert np.array_equal(served.score(odd), full.score(odd), equal_nan=True)
    assert served.estimator._estimator is not None

    data = tmp_path / "X.npy"
    np.save(data, X)
    out = subprocess.run([sys.executable, "-c", _CHILD, tracking_uri, name, version, str(data)],
                         capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["_Deferred", "False", "False"], out.stdout + out.stderr
    assert np.array_equal(np.load(str(data) + ".out.npy"), want)


def _rewrite(local: Path, change: dict[str, np.ndarray]) -> None:
    """Replace arrays in the shipped file and its recorded SHA-256 (a consistent forgery)."""
    with np.load(local / shipped.ARRAYS, allow_pickle=False) as z:
        parts = {k: z[k] for k in z.files}
    buf = io.BytesIO()
    np.savez(buf, **{**parts, **change})
    (local / shipped.ARRAYS).write_bytes(buf.getvalue())
    meta = orjson.loads((local / shipped.META).read_bytes())
    meta["arrays_sha256"] = shipped._sha256(buf.getvalue())
    (local / shipped.META).write_bytes(orjson.dumps(meta))


@pytest.mark.parametrize("damage", ["bytes", "proof", "model", "format", "missing", "garbage"])
def test_a_shipped_scorer_that_does_not_prove_is_refused(
    tracking_uri: str, trained: tuple[str, str, list[dict]], tmp_path: Path,
    caplog: pytest.LogCaptureFixture, damage: str,
) -> None:
    name, version, _ = trained
    local = _download(tracking_uri, name, version, tmp_path / "dl")
    meta_path = local / shipped.META
    if damage == "bytes":  # a flipped byte: the arrays' SHA-256 no longer matches
        raw = bytearray((local / shipped.ARRAYS).read_bytes())
        raw[len(raw) // 3] ^= 0x01
        (local / shipped.ARRAYS).write_bytes(bytes(raw))
        why = "SHA-256"
    elif damage == "proof":  # consistent files whose scorer is not decision_function
        with np.load(local / shipped.ARRAYS, allow_pickle=False) as z:
            scores = z["proof_scores"].copy()
        scores[0] = np.nextafter(scores[0], 1.0)
        _rewrite(local, {"proof_scores": scores})
        why = "not identical"
    elif damage == "model":  # the model file is not the one the scorer was proved against
        meta = orjson.loads(meta_path.read_bytes())
        meta_path.write_bytes(orjson.dumps({**meta, "model_sha256": "0" * 64}))
        why = "proved against another model.skops"
    elif damage == "format":
        meta_path.write_bytes(orjson.dumps({**orjson.loads(meta_path.read_bytes()), "format": 9}))
        why = "unknown format"
    elif damage == "garbage":  # not an npz at all, with a matching SHA-256
        junk = b"PK\x03\x04 not a zip archive"
        (local / shipped.ARRAYS).write_bytes(junk)
        meta = orjson.loads(meta_path.read_bytes())
        meta_path.write_bytes(orjson.dumps({**meta, "arrays_sha256": shipped._sha256(junk)}))
        why = "do not load"
    else:
        (local / shipped.ARRAYS).unlink()
        why = "missing"
    with caplog.at_level(logging.WARNING, logger="stream.registry.shipped"):
        assert load_shipped(local, name, version) is None
    assert why in caplog.text, caplog.text
    # The version still serves, loaded the usual way.
    model = load_directory(local, name, version)
    assert not isinstance(model.estimator, _Deferred) and model.scorer.compiled


def test_a_detector_without_a_compiled_scorer_ships_nothing(
    tracking_uri: str, tmp_path: Path
) -> None:
    flows = list(generate_flows(800, ("acme",), seed=6, attack_rate=0.0))
    name = "unshipped_" + os.urandom(3).hex()
    res = registry.train(flows, model_name=name, uri=tracking_uri, detector="elliptic")
    local = _download(tracking_uri, name, res.version, tmp_path / "dl")
    assert not (local / shipped.META).exists() and not (local / shipped.ARRAYS).exists()
    model = registry.load_version(name, res.version, uri=tracking_uri)
    assert model.info["estimator"] == "EllipticEnvelope"
    assert not isinstance(model.estimator, _Deferred)
    shutil.rmtree(tmp_path / "dl")


def test_a_broken_mlmodel_file_is_a_load_error(
    tracking_uri: str, trained: tuple[str, str, list[dict]], tmp_path: Path
) -> None:
    name, version, _ = trained
    local = _download(tracking_uri, name, version, tmp_path / "dl")
    (local / "MLmodel").write_text("flavors: {sklearn: [unclosed\n")
    with pytest.raises(ModelLoadError, match="MLmodel file does not load"):
        load_shipped(local, name, version)
    with pytest.raises(ModelLoadError, match="MLmodel file does not load"):
        load_directory(local, name, version)


def test_without_the_compiled_walk_the_version_loads_as_before(
    tracking_uri: str, trained: tuple[str, str, list[dict]], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    from stream.scoring import scorers as scoring

    name, version, _ = trained
    local = _download(tracking_uri, name, version, tmp_path / "dl")
    monkeypatch.setattr(scoring, "compiled_forest", None)
    with caplog.at_level(logging.WARNING, logger="stream.registry.shipped"):
        assert load_shipped(local, name, version) is None
    assert caplog.text == ""  # quiet: stream.scoring.scorers says once that the walk is missing
    model = registry.load_version(name, version, uri=tracking_uri)
    assert not isinstance(model.estimator, _Deferred) and not model.scorer.compiled
