"""Generated code for package inference, KServe v2 (scripts/gen_protos.sh)."""
