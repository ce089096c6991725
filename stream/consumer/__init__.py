"""The consumer process: the loop and what it calls, stage by stage.

``service`` wires settings, registry, models and metrics; ``loop`` consumes, scores,
produces and commits; ``batch`` is one micro-batch with no I/O; ``backpressure`` and
``heap`` keep the loop moving.
"""
