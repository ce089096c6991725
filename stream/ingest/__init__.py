"""Ingest: raw message values and recorded files into columns of flow events.

Sensor schemas and ``--input-schema`` views, the decoder with its validation,
``--where``, goflow2's protobuf, and (``files``) the readers of recorded traffic.
"""
