"""Feature specs: the model inputs stored with a model, parsed once, computed vectorized.

One implementation for training, offline scoring, the stream decoder and the
model registry, so train/serve parity holds by construction:

* :mod:`stream.features.columns`: where raw values come from (the
  :class:`ColumnSource` protocol, path lookup, category text);
* :mod:`stream.features.expr`: the expression grammar, AST and evaluator;
* :mod:`stream.features.windows`: window functions (per-entity state over event time);
* :mod:`stream.state.store`: :class:`WindowStore`, that state, bounded;
* :mod:`stream.features.spec`: :class:`FeatureSpec`, fit / compute / store.
"""

from stream.features import windows as _windows  # noqa: F401  (registers the functions)
from stream.features.columns import MISSING, ColumnSource, RecordColumns, canonical, lookup
from stream.features.expr import FUNCTIONS, SpecError, parse
from stream.features.spec import Computed, FeatureSpec
from stream.state.store import WindowStore

__all__ = [
    "FUNCTIONS",
    "MISSING",
    "ColumnSource",
    "Computed",
    "FeatureSpec",
    "RecordColumns",
    "SpecError",
    "WindowStore",
    "canonical",
    "lookup",
    "parse",
]
