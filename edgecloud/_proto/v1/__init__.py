"""Generated code for package edgecloud.v1 (scripts/gen_protos.sh)."""
