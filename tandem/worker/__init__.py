"""Inference worker: engine (request, scheduler, block pool, model runner), gRPC service, KV transfer."""

