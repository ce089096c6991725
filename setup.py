"""Build of the optional compiled forest walk (``stream._forest``); the rest is pyproject.toml.

``optional=True``: without a C compiler the install still succeeds and the
scorer falls back to numpy (with a log line at model load).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("stream._forest", ["stream/_forest.pyx"], optional=True)])
