#!/usr/bin/env bash
# The project's virtualenv: .venv with the operator and the serving image installed editable, with
# their test extras. Used by `make test`, `make demo` and CI (.ci/run), so all three install alike.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]" -e "./serving-image[test]"
