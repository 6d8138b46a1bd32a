#!/usr/bin/env bash
# Label Studio for the end-to-end tests (tests/fixtures/label_studio.py), in a virtual environment of its
# own: it pins Django and friends, which must never meet the project's requirements. Re-installed only
# when requirements-labelstudio.txt changes. Usage: scripts/setup_labelstudio.sh   (LABEL_STUDIO_VENV
# chooses the folder; default .venv-labelstudio)
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${LABEL_STUDIO_VENV:-.venv-labelstudio}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
stamp="$venv/.requirements-$(sha256sum requirements-labelstudio.txt | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "Installing Label Studio into $venv (a few minutes, once)"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -r requirements-labelstudio.txt
  rm -rf "$venv/blank-data"  # the tests' migrated database, made again by this version
  touch "$stamp"
fi
