#!/usr/bin/env bash
# Static checks: ruff, mypy, buf lint, generated-stub drift, and buf breaking against the
# contracts as last landed (.ci/proto-baseline).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${VENV:-.venv}"
bin="$venv/bin"
# protoc finds its mypy plugins (protoc-gen-mypy, protoc-gen-mypy_grpc) on PATH.
export PATH="$(cd "$bin" && pwd):$PATH"
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
# The contracts as last landed on main: .ci/proto-baseline names that commit (updated in the
# commit after a change of contracts lands); TANDEM_PROTO_BASE overrides it.
base="${TANDEM_PROTO_BASE:-$(cat .ci/proto-baseline 2>/dev/null || true)}"
if [ -n "$base" ] && git rev-parse -q --verify "$base^{commit}" >/dev/null \
   && git cat-file -e "$base:proto/tandem/v1" 2>/dev/null; then
  echo "==> buf breaking against $base"
  "$bin/buf" breaking --against ".git#ref=$base"
else
  echo "==> buf breaking: no landed contracts to compare with yet, skipped"
fi
