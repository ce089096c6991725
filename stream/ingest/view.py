"""A batch's raw columns as a sensor schema names them (``--input-schema``).

``columns_for(source, "zeek")`` is the view every scorer and the trainer put
between raw columns (a file's records or a decoded Kafka batch) and a feature
spec, so canonical names (``bytes_transferred``, ``src_ip``, ...) mean the same
whatever sensor wrote the event. ``native`` is the source itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stream.config import SCHEMA_NAMES

if TYPE_CHECKING:
    from stream.features.columns import ColumnSource

__all__ = ["SCHEMA_NAMES", "columns_for"]


def columns_for(source: ColumnSource, schema: str) -> ColumnSource:
    """``source`` seen through ``schema`` (the source itself for ``native``)."""
    if schema == "native":
        return source
    from stream.ingest.schemas import SchemaColumns, get_schema

    return SchemaColumns(source, get_schema(schema))
