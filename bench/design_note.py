"""The design note's ``detect_anomalies``, reproduced as written, for comparison only.

The note's detector keeps a separate StandardScaler and IsolationForest, builds a
pandas DataFrame from the records, scores twice (``predict`` and
``decision_function``) and builds one result dict per record. The body of
``detect_anomalies`` below follows the note line for line; only the two
estimators come from our fitted Pipeline (its own steps), so the scores are
the same model's. ``stream.tools.compat`` is the fixed version and is not what is
measured here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


class DesignNoteDetector:
    """The note's ``MLflowAnomalyDetector`` scoring path for one tenant's loaded model."""

    def __init__(self, pipeline: Any) -> None:
        self.scaler = pipeline.named_steps["scaler"]
        self.model = pipeline.named_steps["isolation_forest"]

    def detect_anomalies(self, network_data: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not self.model:
            raise ValueError("Model not loaded. Call load_model() first.")

        df = pd.DataFrame(network_data)
        features = self._extract_features(df)
        X = self.scaler.transform(features)

        predictions = self.model.predict(X)
        anomaly_scores = self.model.decision_function(X)

        results = []
        for i, (prediction, score) in enumerate(zip(predictions, anomaly_scores, strict=True)):
            results.append(
                {
                    "index": i,
                    "is_anomaly": prediction == -1,
                    "anomaly_score": float(score),
                    "threat_level": self._score_to_threat_level(score),
                    "original_data": network_data[i],
                }
            )
        return results

    def _extract_features(self, df: pd.DataFrame) -> np.ndarray:
        features = []
        if "bytes_transferred" in df.columns:
            features.append(df["bytes_transferred"].fillna(0))
        if "packet_count" in df.columns:
            features.append(df["packet_count"].fillna(0))
        if "connection_duration" in df.columns:
            features.append(df["connection_duration"].fillna(0))
        return np.column_stack(features) if features else np.zeros((len(df), 1))

    def _score_to_threat_level(self, score: float) -> str:
        if score < -0.5:
            return "critical"
        elif score < -0.2:
            return "high"
        elif score < 0:
            return "medium"
        else:
            return "low"
