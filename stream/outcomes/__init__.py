"""Outcomes: what becomes of a scored or rejected event.

Alert and dead-letter records (``records``), reason codes (``reasons``), SIEM formats
(``formats``), incidents (``incidents``) and risk per entity (``risk``).
"""
