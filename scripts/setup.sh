#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv, with every dependency pinned
# by constraints.txt (torch==2.13.0 is the CPU wheel; a looser pin would fetch a CUDA build).
# Safe to run again: it only installs what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check \
  -c constraints.txt -e '.[test,postgres,mysql,dev]'
