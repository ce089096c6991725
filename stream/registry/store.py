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
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)

VIEW_FILE = "registry-view.json"


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
