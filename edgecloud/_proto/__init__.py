"""Generated protobuf and gRPC code; never edit by hand (scripts/gen_protos.sh)."""
