"""Build of the optional compiled parts; the rest is pyproject.toml.

* ``stream.scoring._forest``: the forest walk (:mod:`stream.scoring.scorers`);
* ``stream.state._wincore``: the window kernels (:mod:`stream.features.windows`).

``optional=True``: without a C compiler the install still succeeds, and each
falls back to its Python form (with a log line when it is first used).
"""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("stream.scoring._forest", ["stream/scoring/_forest.pyx"], optional=True),
    Extension("stream.state._wincore", ["stream/state/_wincore.pyx"], optional=True),
])
