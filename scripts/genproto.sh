#!/usr/bin/env bash
# Regenerates the Python stubs (messages, gRPC services, typed stubs) from proto/.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-.venv/bin/python}"
# protoc finds the mypy plugins (protoc-gen-mypy, protoc-gen-mypy_grpc) on PATH.
export PATH="$(dirname "$py"):$PATH"
out=tandem/v1
find "$out" -name '*_pb2*.py*' -delete 2>/dev/null || true
"$py" -m grpc_tools.protoc -Iproto \
  --python_out=. --grpc_python_out=. \
  --mypy_out=. --mypy_grpc_out=. \
  proto/tandem/v1/*.proto
echo "generated $(ls $out/*_pb2*.py | wc -l) modules in $out"
