#!/usr/bin/env bash
# Generate the Python gRPC code for protos/vmmgr/v1/*.proto into vmmgr/v1/ (committed):
#   x_pb2.py, x_pb2.pyi, x_pb2_grpc.py, x_pb2_grpc.pyi   (import as `from vmmgr.v1 import x_pb2`)
# and run `buf lint` from protos/ when buf and protos/buf.yaml are there.
#
#   scripts/gen-protos.sh           regenerate in place
#   scripts/gen-protos.sh --check   regenerate into a temp dir and fail if the committed files
#                                   differ (or a generated file is missing or stale)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
[ -x "$PY" ] || PY=python3
export PATH="$VENV/bin:$PATH"    # protoc-gen-mypy, protoc-gen-mypy_grpc, buf
CHECK=""
[ "${1:-}" = --check ] && CHECK=1
log() { printf '[gen-protos] %s\n' "$*" >&2; }

shopt -s nullglob
protos=(protos/vmmgr/v1/*.proto)
if [ ${#protos[@]} -eq 0 ]; then
  log "no protos/vmmgr/v1/*.proto yet; nothing to generate or check"
  exit 0
fi

gen() {  # gen OUTDIR
  mkdir -p "$1"
  "$PY" -m grpc_tools.protoc -I protos \
    --python_out="$1" --grpc_python_out="$1" --mypy_out="$1" --mypy_grpc_out="$1" \
    "${protos[@]}" 2>&1 | { grep -v '^Writing mypy to' || true; } >&2
  return "${PIPESTATUS[0]}"
}

lint() {
  if command -v buf >/dev/null && [ -f protos/buf.yaml ]; then
    log "buf lint"
    (cd protos && buf lint) || { log "buf lint failed"; return 1; }
  else
    log "buf lint skipped ($(command -v buf >/dev/null && echo 'no protos/buf.yaml' || echo 'no buf'))"
  fi
}

if [ -z "$CHECK" ]; then
  gen .
  log "generated: $(cd vmmgr/v1 && ls -- *_pb2*.py* | tr '\n' ' ')"
  lint
  exit $?
fi

TMP="$(mktemp -d)"; trap 'rm -rf "$TMP"' EXIT
gen "$TMP"
rc=0
lint || rc=1
for f in "$TMP"/vmmgr/v1/*_pb2*.py*; do
  rel="vmmgr/v1/$(basename "$f")"
  if [ ! -f "$rel" ]; then
    log "MISSING: $rel is not committed"; rc=1
  elif ! diff -u "$rel" "$f" >"$TMP/diff"; then
    log "STALE: $rel differs from what protos/ generate:"; head -n 40 "$TMP/diff" >&2; rc=1
  fi
done
for f in vmmgr/v1/*_pb2*.py*; do
  [ -f "$TMP/$f" ] || { log "ORPHAN: $f has no .proto any more"; rc=1; }
done
if [ $rc -ne 0 ]; then
  log "generated code is out of date: run 'make proto' and commit vmmgr/v1/"
  exit 1
fi
log "vmmgr/v1 is up to date with protos/ (${#protos[@]} files)"
