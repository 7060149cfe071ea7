"""Kernel tests run the Triton kernels on the CPU through Triton's interpreter
when there is no CUDA device, and compiled on the GPU when there is one.

The interpreter is chosen when a kernel is decorated (module import), so the
switch must be on before the kernel modules load. Other test folders may have
imported them already (through the models), so they are reloaded here, in
dependency order, to re-decorate their kernels for the interpreter.
"""

from __future__ import annotations

import importlib
import os
import sys

import torch

_KERNEL_MODULES = (
    "tandem.kernels.checks",
    "tandem.kernels.store_kv",
    "tandem.kernels.rotary",
    "tandem.kernels.rotary_store_kv",
    "tandem.kernels.rms_norm",
    "tandem.kernels.silu_mul",
    "tandem.kernels.paged_decode_attention",
    "tandem.kernels.paged_prefill_attention",
    "tandem.kernels.ops",
)

if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    os.environ["TRITON_INTERPRET"] = "1"
    for _name in _KERNEL_MODULES:
        if _name in sys.modules:
            importlib.reload(sys.modules[_name])
