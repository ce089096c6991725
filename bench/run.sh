#!/usr/bin/env bash
# The performance table in one command: install the project into .venv if needed, then
# run every benchmark row (about 3-4 minutes on 2 cores). Extra arguments go to
# `python -m bench` (see `bash bench/run.sh --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q -e .
exec .venv/bin/python -m bench "$@"
