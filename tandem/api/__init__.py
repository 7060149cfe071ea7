"""Kubernetes-facing API: typed InferencePool models, the one source of the CRD schema."""
