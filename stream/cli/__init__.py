"""Command line: run, train, promote, models, broker, demo, generate, replay, score, ...

One module per command group (``consumer``, ``models``, ``traffic``, ``topics``), on the
group and the options every command shares (``base``).
"""

from stream.cli import console, consumer, models, topics, traffic  # noqa: F401  (register commands)
from stream.cli.base import main

__all__ = ["main"]
