"""Feature specs: the model inputs stored with a model, parsed once, computed vectorized.

One implementation for training, offline scoring, the stream decoder and the
model registry, so train/serve parity holds by construction:

* :mod:`stream.features.columns`: where raw values come from (the
  :class:`ColumnSource` protocol, path lookup, category text);
* :mod:`stream.features.expr`: the expression grammar, AST and evaluator;
* :mod:`stream.features.spec`: :class:`FeatureSpec`, fit / compute / store.
"""

from stream.features.columns import MISSING, ColumnSource, RecordColumns, canonical, lookup
from stream.features.expr import FUNCTIONS, SpecError, parse
from stream.features.spec import Computed, FeatureSpec

__all__ = [
    "FUNCTIONS",
    "MISSING",
    "ColumnSource",
    "Computed",
    "FeatureSpec",
    "RecordColumns",
    "SpecError",
    "canonical",
    "lookup",
    "parse",
]
