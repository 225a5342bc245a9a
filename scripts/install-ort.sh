#!/usr/bin/env bash
# Installs ONNX Runtime (the PyPI wheel, which carries libonnxruntime.so) into a virtualenv,
# ./.venv by default, where `monitor` finds it without any flag. Idempotent.
#   scripts/install-ort.sh [VERSION [VENV]]
#   scripts/install-ort.sh 1.24.4 .venv-ort-1.24.4    # the older release the drift tests use
# GPU hosts: ORT_PACKAGE=onnxruntime-gpu scripts/install-ort.sh
# The default VERSION is PIN_ORT_VERSION in scripts/versions.env (shared with docker/Dockerfile).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/versions.env
. scripts/versions.env
version="${1:-$PIN_ORT_VERSION}"
venv="${2:-.venv}"
package="${ORT_PACKAGE:-$PIN_ORT_CPU_PACKAGE}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('$package') != '$version')" 2>/dev/null; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$package==$version"
fi
ls "$venv"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -n 1
