#!/usr/bin/env bash
# Builds tests/load/tandem.protoset: a FileDescriptorSet of proto/tandem/v1 (with imports) for
# tools that read descriptors instead of using server reflection (ghz --protoset, grpcurl
# -protoset). Committed; tests/unit/test_load_configs.py fails when it drifts from proto/.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-.venv/bin/python}"
out="${1:-tests/load/tandem.protoset}"
"$py" -m grpc_tools.protoc -Iproto --include_imports --descriptor_set_out="$out" \
  proto/tandem/v1/*.proto
echo "wrote $out ($(wc -c <"$out") bytes)"
