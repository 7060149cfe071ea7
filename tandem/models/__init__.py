"""Model architectures in PyTorch (Llama family) and Hugging Face-format loading."""

