"""The proved scorer a trainer ships inside a model version, so a consumer scores without sklearn.

``stream train`` (any ``log_pipeline``) fits the model, proves the compiled forest
scorer bit-identical to its ``decision_function`` (``scoring.fast_isolation_forest``)
and logs two more files into the version's MLflow model directory:

- ``stream-scorer.npz``: the scorer's plain arrays (read without pickle), plus
  ``proof_X``, rows the trainer scored (its probes and a sample of the training
  matrix), and ``proof_scores``, what the model's own ``decision_function`` gave
  for them;
- ``stream-scorer.json``: format, the SHA-256 of the arrays file and of the
  model file it was proved against (``model.skops``), and the estimator's name.

The two hashes are also set on the model version in the registry (tag
``stream.scorer``: ``ARRAYS_SHA256:MODEL_SHA256``), which is not the artifact store:
whoever can change the files of a version (a bucket, a shared disk) cannot change
what the registry says they were. A consumer that downloads the version checks the
files against both the registry's hashes and the JSON's, rebuilds the scorer from
the arrays (every index, size and depth checked first: ``scoring._checked_parts``)
and scores ``proof_X``: only when the result is bit-identical to ``proof_scores``
does it serve the version from them, without importing
scikit-learn or skops (about 1.5 s of a first start, and the deserialisation of
every model). So the load-time identity check still runs on the consumer's
machine and build, against ``decision_function``'s output as the trainer computed
it, which is also what the thresholds were calibrated on. Anything missing or
different: the version loads the usual way, with a log line saying why. The
fitted estimator itself is loaded only if something asks for it (``_Deferred``).
"""

from __future__ import annotations

import hashlib
import io
import logging
import zipfile
from pathlib import Path
from typing import Any, Final

import numpy as np
import orjson

from stream.scoring import scorers as scoring
from stream.scoring.scorers import Scorer, compiled_scorer, fast_isolation_forest

log = logging.getLogger(__name__)

ARRAYS: Final = "stream-scorer.npz"
META: Final = "stream-scorer.json"
FORMAT: Final = 1
#: Training rows the proof keeps (with the scorer's own probes): enough to reach
#: every tree's deep leaves many times over, small next to the trees (~0.1 MB).
PROOF_ROWS: Final = 1024
#: More proof rows than a trainer writes (PROOF_ROWS, its probes): not a trainer's file.
MAX_PROOF_ROWS: Final = 4 * PROOF_ROWS


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(pipeline: Any, X: np.ndarray, model_file: bytes, dest: Path) -> bool:
    """Prove the compiled scorer of ``pipeline`` and write it into ``dest``; False when
    the pipeline has none (not a scaler + IsolationForest, or no compiled extension)."""
    sample = np.asarray(X[:: max(1, len(X) // PROOF_ROWS)][:PROOF_ROWS], dtype=np.float64)
    scorer = fast_isolation_forest(pipeline, check=sample)
    parts = getattr(scorer, "parts", None)
    if parts is None:
        return False
    center = np.asarray(pipeline[0].mean_, dtype=np.float64)
    scale = np.asarray(pipeline[0].scale_, dtype=np.float64)
    rng = np.random.default_rng(1)
    probes = center + scale * rng.standard_normal((256, len(center))) * 3.0
    proof_X = np.vstack([sample, probes, center, center + 50 * scale, center - 50 * scale])
    proof_scores = np.asarray(pipeline.decision_function(proof_X), dtype=np.float64)
    buf = io.BytesIO()
    np.savez(buf, **parts, proof_X=proof_X, proof_scores=proof_scores)
    data = buf.getvalue()
    (dest / ARRAYS).write_bytes(data)
    (dest / META).write_bytes(orjson.dumps({
        "format": FORMAT,
        "arrays_sha256": _sha256(data),
        "model_sha256": _sha256(model_file),
        "estimator": type(pipeline[-1]).__name__,
    }))
    return True


#: The model version tag holding the shipped files' hashes (set by the trainer).
TAG: Final = "stream.scorer"


def registered_hashes(client: Any, name: str, version: str) -> str:
    """The version's ``TAG`` in the registry ("" when it has none)."""
    tags = getattr(client.get_model_version(name, version), "tags", None) or {}
    return str(tags.get(TAG, ""))


def register_hashes(client: Any, name: str, version: str, meta: dict[str, Any]) -> None:
    client.set_model_version_tag(name, version, TAG,
                                 f"{meta['arrays_sha256']}:{meta['model_sha256']}")


def read(local: Path, model_file: str, fallback: Any, source: str,
         registered: str | None = None) -> tuple[Scorer, str] | None:
    """The shipped scorer of the model directory ``local`` once it proves identical here,
    with the estimator's name; None (and why, in the log) when it does not.

    ``registered``: the hashes the registry holds for the version ("" for none: then the
    files are not trusted); None when no registry vouches (a local directory)."""
    if scoring.compiled_forest is None:
        return None  # no compiled walk here: the model loads (stream.scoring.scorers says so once)
    try:
        meta = orjson.loads((local / META).read_bytes())
    except FileNotFoundError:
        return None  # trained before scorers were shipped, or not a forest
    except (OSError, ValueError) as e:
        log.warning("%s: its shipped scorer is unreadable (%s); loading the model", source, e)
        return None
    if registered == "":
        log.info("%s: the registry holds no hashes of its shipped scorer (trained before "
                 "they were registered): loading the model", source)
        return None
    data, why = _checked(local, meta, model_file)
    if why is None and registered is not None and isinstance(meta, dict) and registered != \
            f"{meta.get('arrays_sha256')}:{meta.get('model_sha256')}":
        why = "its files are not the ones the registry holds the hashes of"
    scorer, why = _proved(data, fallback) if why is None else (None, why)
    if scorer is not None:
        return scorer, str(meta.get("estimator", "IsolationForest"))
    log.warning("%s: its shipped scorer is not used (%s); loading the model", source, why)
    return None


def _proved(data: bytes, fallback: Any) -> tuple[Scorer | None, str]:
    """The scorer rebuilt from the arrays file once it scores its proof rows exactly as
    ``decision_function`` did at training; else None and why."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            parts = {k: z[k] for k in z.files}
        proof_X, proof_scores = parts.pop("proof_X"), parts.pop("proof_scores")
        if proof_X.ndim != 2 or len(proof_X) > MAX_PROOF_ROWS or proof_scores.shape != (
                len(proof_X),) or proof_X.dtype.kind != "f" or proof_scores.dtype.kind != "f":
            return None, "its proof rows are not what a trainer writes"
        scorer = compiled_scorer(parts, fallback)
        if scorer is None:
            return None, "its arrays do not rebuild the compiled scorer"
        if proof_X.shape[1] != int(parts["constants"][2]):
            return None, "its proof rows have another number of inputs"
        if not np.array_equal(scorer(proof_X), proof_scores):
            return None, "it is not identical to decision_function on its proof rows"
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        return None, f"its arrays do not load ({type(e).__name__}: {e})"
    return scorer, ""


def _checked(local: Path, meta: Any, model_file: str) -> tuple[bytes, str | None]:
    """The arrays file, and why the shipped files cannot be used as they are (or None)."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return b"", "an unknown format"
    try:
        data = (local / ARRAYS).read_bytes()
        if _sha256(data) != meta.get("arrays_sha256"):
            return data, "its arrays do not match their SHA-256"
        if _sha256((local / model_file).read_bytes()) != meta.get("model_sha256"):
            return data, f"it was proved against another {model_file}"
    except OSError as e:
        return b"", f"a file is missing ({e})"
    return data, None
