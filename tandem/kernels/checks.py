"""Argument checks shared by the kernel launchers, and whether Triton is there.

A launcher hands raw pointers and strides to a Triton kernel, which trusts
them: a wrong dtype or a transposed tensor reads garbage instead of failing.
So every launcher checks its inputs first and raises a `KernelInputError` that
names the argument and what was expected.
"""

from __future__ import annotations

import importlib.util
import os

import torch

#: Triton is optional: CPU-only installs run the plain-PyTorch references.
HAS_TRITON = importlib.util.find_spec("triton") is not None

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int32, torch.int64)


class KernelInputError(ValueError):
    """A kernel launcher was given a tensor it cannot run on."""


def interpreting() -> bool:
    """True when Triton kernels run through the CPU interpreter (tests)."""
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def runnable(*tensors: torch.Tensor) -> bool:
    """Whether the Triton kernel can take these tensors: on CUDA, or on the CPU
    when Triton's interpreter is switched on."""
    if not HAS_TRITON:
        return False
    if all(t.is_cuda for t in tensors):
        return True
    return interpreting() and all(t.device.type == "cpu" for t in tensors)


def check_dtype(name: str, t: torch.Tensor, allowed: tuple[torch.dtype, ...]) -> None:
    if t.dtype not in allowed:
        names = ", ".join(str(d).removeprefix("torch.") for d in allowed)
        raise KernelInputError(f"{name}: dtype {t.dtype} not supported (expected one of {names})")


def check_ndim(name: str, t: torch.Tensor, ndim: int, layout: str) -> None:
    if t.dim() != ndim:
        raise KernelInputError(f"{name}: expected {ndim} dims {layout}, got shape {tuple(t.shape)}")


def check_dim(name: str, t: torch.Tensor, dim: int, size: int, what: str) -> None:
    if t.shape[dim] != size:
        raise KernelInputError(
            f"{name}: dim {dim} is {t.shape[dim]}, expected {size} ({what}); shape {tuple(t.shape)}"
        )


def check_last_contiguous(name: str, t: torch.Tensor) -> None:
    """Rows must be contiguous in their last dim so a row loads as one vector."""
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        raise KernelInputError(
            f"{name}: last dim must have stride 1, got strides {tuple(t.stride())}"
        )


def check_contiguous(name: str, t: torch.Tensor) -> None:
    if not t.is_contiguous():
        raise KernelInputError(f"{name}: must be contiguous, got strides {tuple(t.stride())}")


def check_same_device(**tensors: torch.Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise KernelInputError(f"tensors on different devices: {listed}")


def check_same_dtype(**tensors: torch.Tensor) -> None:
    dtypes = {name: t.dtype for name, t in tensors.items()}
    if len(set(dtypes.values())) > 1:
        listed = ", ".join(f"{n} is {d}" for n, d in dtypes.items())
        raise KernelInputError(f"dtypes differ: {listed}")


def check_power_of_two(name: str, value: int, minimum: int = 1) -> None:
    if value < minimum or value & (value - 1):
        raise KernelInputError(f"{name}: {value} must be a power of two >= {minimum}")


def next_power_of_two(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def check_out(name: str, out: torch.Tensor, like: torch.Tensor) -> None:
    """A caller-provided output must match what the kernel would allocate."""
    if out.shape != like.shape or out.dtype != like.dtype or out.device != like.device:
        raise KernelInputError(
            f"{name}: expected {tuple(like.shape)} {like.dtype} on {like.device}, "
            f"got {tuple(out.shape)} {out.dtype} on {out.device}"
        )
    check_contiguous(name, out)
