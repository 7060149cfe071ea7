"""OpenAI-compatible HTTP and gRPC front door, traffic control, worker selection, KV-shipping orchestration."""

