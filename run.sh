#!/usr/bin/env bash
# One entry point for a fresh machine: creates .venv on first use, then runs faster-dia.
#   ./run.sh speak "[S1] Hello. [S2] Hi!" -o hello.wav    # any faster-dia command
#   ./run.sh test                                          # lint + the test suite
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv"
stamp="$venv/.installed"
if [ ! -f "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -c "$here/constraints.txt" -e "$here[all]"
  touch "$stamp"
fi
if [ "${1:-}" = "test" ]; then
  shift
  cd "$here"
  "$venv/bin/ruff" check .
  HF_HUB_OFFLINE=1 exec "$venv/bin/python" -m pytest -q "$@"
fi
exec "$venv/bin/faster-dia" "$@"
