"""GENERATED protobuf/gRPC code only (see hack/gen_proto.py)."""

