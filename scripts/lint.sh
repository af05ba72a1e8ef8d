#!/usr/bin/env bash
# Static checks: ruff, mypy, buf lint, generated-stub drift, and buf breaking against the
# parent commit's contracts.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${VENV:-.venv}"
bin="$venv/bin"
echo "==> ruff";  "$bin/ruff" check --quiet .
echo "==> mypy";  "$bin/mypy" --no-error-summary
echo "==> buf lint"; "$bin/buf" lint
echo "==> generated stubs in sync with proto/"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
"$bin/python" -m grpc_tools.protoc -Iproto --python_out="$tmp" --grpc_python_out="$tmp" \
  --mypy_out="$tmp" --mypy_grpc_out="$tmp" proto/tandem/v1/*.proto
if ! diff -r -q -x __init__.py -x __pycache__ "$tmp/tandem/v1" tandem/v1 >/dev/null; then
  diff -r -x __init__.py -x __pycache__ "$tmp/tandem/v1" tandem/v1 | head -20
  echo "stubs drifted from proto/: run 'make proto' and commit" >&2
  exit 1
fi
base="${TANDEM_PROTO_BASE:-HEAD~1}"
if git rev-parse -q --verify "$base^{commit}" >/dev/null \
   && git cat-file -e "$base:proto/tandem/v1" 2>/dev/null; then
  echo "==> buf breaking against $base"
  "$bin/buf" breaking --against ".git#ref=$base"
else
  echo "==> buf breaking: no contracts at $base, skipped"
fi
