#!/usr/bin/env bash
# Regenerate edgecloud/_proto/ from protos/ (the only way that folder changes).
#   scripts/gen_protos.sh           rewrite the generated code
#   scripts/gen_protos.sh --check   fail when the committed code is stale
#
# The .proto sources live in protos/edgecloud/v1/ but the Python modules live in
# edgecloud/_proto/v1/, so the sources are staged under that path first: protoc
# then writes imports (`from edgecloud._proto.v1 import ...`) that resolve.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"

stage="$(mktemp -d)"
out="$(mktemp -d)"
trap 'rm -rf "$stage" "$out"' EXIT

mkdir -p "$stage/edgecloud/_proto/v1" "$stage/edgecloud/_proto/inference"
cp protos/edgecloud/v1/*.proto "$stage/edgecloud/_proto/v1/"
cp protos/inference/*.proto "$stage/edgecloud/_proto/inference/"
"$PYTHON" -m grpc_tools.protoc -I "$stage" \
    --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
    "$stage"/edgecloud/_proto/v1/*.proto "$stage"/edgecloud/_proto/inference/*.proto
printf '"""Generated protobuf and gRPC code; never edit by hand (scripts/gen_protos.sh)."""\n' \
    > "$out/edgecloud/_proto/__init__.py"
printf '"""Generated code for package edgecloud.v1 (scripts/gen_protos.sh)."""\n' \
    > "$out/edgecloud/_proto/v1/__init__.py"
printf '"""Generated code for package inference, KServe v2 (scripts/gen_protos.sh)."""\n' \
    > "$out/edgecloud/_proto/inference/__init__.py"

if [ "${1:-}" = "--check" ]; then
    if ! diff -ru edgecloud/_proto "$out/edgecloud/_proto" --exclude=__pycache__; then
        echo "edgecloud/_proto is stale: run scripts/gen_protos.sh and commit the result" >&2
        exit 1
    fi
    echo "edgecloud/_proto is up to date"
else
    rm -rf edgecloud/_proto
    cp -r "$out/edgecloud/_proto" edgecloud/_proto
    echo "regenerated edgecloud/_proto"
fi
