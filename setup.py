"""Build of the optional compiled parts; the rest is pyproject.toml.

* ``stream._forest``: the forest walk (:mod:`stream.scoring`);
* ``stream.features._wincore``: the window kernels (:mod:`stream.features.windows`).

``optional=True``: without a C compiler the install still succeeds, and each
falls back to its Python form (with a log line when it is first used).
"""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("stream._forest", ["stream/_forest.pyx"], optional=True),
    Extension("stream.features._wincore", ["stream/features/_wincore.pyx"], optional=True),
])
