"""The model store (``MODEL_STORAGE_PATH``): the consumer's local copy of what it serves.

With ``--model-storage-path DIR`` (the design note's ``MODEL_STORAGE_PATH``), every
model version the consumer downloads is kept under ``DIR/NAME/VERSION`` (the MLflow
model directory as downloaded, written to a temporary name and renamed, so a copy
is whole or absent), and every successful registry poll writes the production and
challenger versions it found to ``DIR/registry-view.json``. A consumer that starts
while the registry is down then serves the versions of the last poll it recorded,
says so in its log, and takes up the registry's view again at the first poll that
answers. A version the registry cannot deliver later (an artifact store outage) is
loaded from its copy when there is one. Copies of versions no longer named by the
last view are removed.

Beside each copy, once the version has loaded and its compiled forest scorer has
proved bit-identical to its ``decision_function``, the scorer's arrays are kept
too (``stream-proved-scorer.npz``, plain arrays read without pickle, with a
SHA-256 and the registry location they belong to). A restart that finds the
registry naming that same location scores from them at once, without importing
scikit-learn or skops or downloading the version again: the proof is the one
made when the copy was kept.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

log = logging.getLogger(__name__)

VIEW_FILE = "registry-view.json"
#: Beside a kept version: the compiled scorer it proved identical to its decision_function.
PROVED_ARRAYS = "stream-proved-scorer.npz"
PROVED_META = "stream-proved-scorer.json"


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class ModelStore:
    """Model version copies and the last registry view, under one directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _dir(self, name: str, version: str) -> Path:
        return self.root / name / str(version)

    def path(self, name: str, version: str) -> Path | None:
        d = self._dir(name, version)
        return d if (d / "MLmodel").is_file() else None

    def keep(self, name: str, version: str, local: Path) -> None:
        """Copy a downloaded model directory in (whole or not at all)."""
        target = self._dir(name, version)
        if target.exists():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=target.parent))
        try:
            shutil.copytree(local, tmp, dirs_exist_ok=True)
            os.replace(tmp, target)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            log.warning("cannot keep %s v%s in the model store: %s", name, version, e)

    def keep_proved(self, name: str, version: str, location: str, parts: dict[str, Any],
                    info: dict[str, Any]) -> None:
        """Record the scorer a kept version proved identical at load, for fast restarts.

        ``location`` is where the registry said the version's files are: a copy is used
        only while the registry still says so (a version number reused after a delete
        is a different model).
        """
        d = self._dir(name, version)
        if not (d / "MLmodel").is_file() or self.proved(name, version, location) is not None:
            return
        try:
            buf = io.BytesIO()
            np.savez(buf, **parts)
            data = buf.getvalue()
            _write(d / PROVED_ARRAYS, data)
            _write(d / PROVED_META, orjson.dumps({
                "format": 1, "location": location, "info": info,
                "sha256": hashlib.sha256(data).hexdigest(),
            }))
        except OSError as e:
            log.warning("cannot keep the proved scorer of %s v%s: %s", name, version, e)

    def proved(
        self, name: str, version: str, location: str
    ) -> tuple[Path, dict[str, Any], dict[str, Any]] | None:
        """(the kept copy, the proved scorer's arrays, info) when both are whole and current."""
        d = self._dir(name, version)
        try:
            meta = orjson.loads((d / PROVED_META).read_bytes())
            data = (d / PROVED_ARRAYS).read_bytes()
            if (meta.get("format") != 1 or meta.get("location") != location
                    or hashlib.sha256(data).hexdigest() != meta.get("sha256")
                    or not (d / "MLmodel").is_file()):
                return None
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                parts = {k: z[k] for k in z.files}
            return d, parts, dict(meta.get("info") or {})
        except (OSError, ValueError, TypeError, AttributeError):
            return None

    def save_view(self, view: Any) -> None:
        """Record a successful poll's production and challenger versions; prune copies."""
        doc = {"production": view.production, "challenger": view.challenger,
               "saved_at": time.time()}
        tmp = self.root / f".{VIEW_FILE}.tmp"
        tmp.write_bytes(orjson.dumps(doc))
        os.replace(tmp, self.root / VIEW_FILE)
        wanted = set(view.production.items()) | set(view.challenger.items())
        for model_dir in self.root.iterdir():
            if not model_dir.is_dir():
                continue
            for vdir in model_dir.iterdir():
                if vdir.is_dir() and not vdir.name.startswith(".") and (
                        model_dir.name, vdir.name) not in wanted:
                    shutil.rmtree(vdir, ignore_errors=True)

    def load_view(self) -> tuple[dict[str, str], dict[str, str], float] | None:
        """(production, challenger, when it was saved) of the last recorded poll."""
        try:
            doc = orjson.loads((self.root / VIEW_FILE).read_bytes())
            return dict(doc["production"]), dict(doc["challenger"]), float(doc["saved_at"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
