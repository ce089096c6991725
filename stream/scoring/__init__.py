"""Scoring: matrices of features in, scores and threat levels out.

Scorers and the compiled forest (``scorers``), our own detectors (``detectors``), the
one threshold policy (``thresholds``) and the training baseline that explanations and
drift compare against (``baseline``).
"""
