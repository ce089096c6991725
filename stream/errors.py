"""The tool's one exception base.

Every exception the tool raises on purpose (a refusal with its reason, a step that
failed and says why) is a :class:`StreamError`, beside the built-in type that says
what kind of failure it is (``SpecError`` is also a ``ValueError``, ``PortInUse`` an
``OSError``), so a caller can tell the tool's own errors from a bug with one
``except StreamError``. A leaf: it imports nothing of the tool's.
"""

from __future__ import annotations

__all__ = ["StreamError"]


class StreamError(Exception):
    """Base of every exception this tool raises on purpose."""
