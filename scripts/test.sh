#!/usr/bin/env bash
# Install the project with its test extras into .venv, then lint, type-check and run the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
.venv/bin/ruff check stream tests bench
.venv/bin/mypy  # the package, configured in pyproject.toml
.venv/bin/python -m pytest "$@"
