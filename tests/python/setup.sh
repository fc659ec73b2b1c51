#!/usr/bin/env bash
# Creates the virtualenv for the Python interop tests: the unmodified `spiffe` package from PyPI
# (py-spiffe, a grpcio C-core client). Tests find it at target/pyvenv/bin/python.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=target/pyvenv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "spiffe==0.3.2"
"$venv/bin/python" -c 'import spiffe, grpc; print("python interop venv ready: spiffe", getattr(spiffe, "__version__", "?"), "grpcio", grpc.__version__)'
