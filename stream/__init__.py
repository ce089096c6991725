"""stream: Kafka flow events -> per-tenant MLflow production models -> threat-level alerts.

The design note's classes are importable from here: ``stream.MLModelManager``
and ``stream.MLflowAnomalyDetector`` (loaded lazily; importing ``stream`` does
not import MLflow).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["MLModelManager", "MLflowAnomalyDetector", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("MLModelManager", "MLflowAnomalyDetector"):
        from stream.tools import compat

        return getattr(compat, name)
    raise AttributeError(f"module 'stream' has no attribute {name!r}")
