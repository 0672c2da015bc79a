#!/usr/bin/env bash
# Install Label Studio 1.23.2 into .cache/ls-venv for the end-to-end tests.
# Idempotent: does nothing when the venv already reports version 1.23.2.
# Needs only python3 (>= 3.10) and a reachable PyPI (pip's global config is honoured).
set -euo pipefail

LS_VERSION="${LS_VERSION:-1.23.2}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LS_VENV:-$ROOT/.cache/ls-venv}"
PYTHON="${PYTHON:-python3}"
start=$(date +%s)

installed_version() {
  # `label-studio --version` imports Django and prints a banner; ask pip's metadata instead (fast, quiet).
  "$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('label-studio'))" 2>/dev/null || true
}

if [[ -x "$VENV/bin/label-studio" && "$(installed_version)" == "$LS_VERSION" ]]; then
  echo "label-studio $LS_VERSION already installed in $VENV"
  exit 0
fi

echo "installing label-studio==$LS_VERSION into $VENV"
mkdir -p "$(dirname "$VENV")"
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "label-studio==$LS_VERSION"

got="$(installed_version)"
if [[ "$got" != "$LS_VERSION" ]]; then
  echo "error: expected label-studio $LS_VERSION, found '${got}'" >&2
  exit 1
fi
echo "label-studio $got installed in $VENV in $(( $(date +%s) - start )) s"
