"""Triton kernels, one per file, each with a plain-PyTorch reference."""

