"""Compile the attention kernels for sm_90 (H100/H200) on any machine, no GPU
needed, with the launchers' default tiles, and print each configuration's
shared-memory size as JSON lines.

The CPU interpreter cannot see resource limits (a tile set that needs more
shared memory than the chip has runs fine there and fails on the GPU), so
test_sm90_compile.py runs this in a subprocess without TRITON_INTERPRET.
Integer arguments carry the divisibility-by-16 hint that Triton's launcher
adds at run time for such values, so the code is what the GPU would get.
"""

from __future__ import annotations

import json
from typing import Any

from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile

from tandem.kernels import paged_decode_attention as decode
from tandem.kernels import paged_prefill_attention as prefill
from tandem.kernels import prefill_attention_hopper as hopper

_INDEX_PTRS = {"block_tables_ptr": "*i32", "query_start_ptr": "*i32", "seq_lens_ptr": "*i32"}
_FLOAT_PTRS = {"part_out_ptr": "*fp32", "part_lse_ptr": "*fp32"}
_NOT_DIVISIBLE = {"group", "num_splits", "qk_scale"}


def shared_bytes(
    fn: Any, constexprs: dict[str, Any], elem: str, num_warps: int, num_stages: int,
    descriptors: dict[str, str] | None = None, source_type: Any = ASTSource,
) -> int:  # fmt: skip
    names = fn.arg_names
    signature: dict[str, str] = {}
    descriptors = descriptors or {}
    for name in names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in descriptors:
            signature[name] = descriptors[name]
        elif name in _INDEX_PTRS or name in _FLOAT_PTRS:
            signature[name] = {**_INDEX_PTRS, **_FLOAT_PTRS}[name]
        elif name.endswith("_ptr"):
            signature[name] = "*" + elem
        else:
            signature[name] = "fp32" if name == "qk_scale" else "i32"
    attrs = {
        (names.index(n),): [["tt.divisibility", 16]]
        for n in names
        if n not in constexprs and n not in _NOT_DIVISIBLE and n not in descriptors
    }
    source = source_type(
        fn, signature, constexprs={(names.index(k),): v for k, v in constexprs.items()}, attrs=attrs
    )
    kernel = compile(
        source, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps, "num_stages": num_stages}
    )
    return int(kernel.metadata.shared)


def prefill_case(elem: str, elem_bytes: int, head_dim: int, group: int, tma: bool) -> dict[str, Any]:
    """The launcher's default tiles; `tma`: the split path with descriptors
    for this step's K/V rows (the engine's prefill on the GPU)."""
    block_m, block_n, warps, stages = prefill.default_tiles(head_dim, elem_bytes, on_gpu=True)
    group_tile = group if 1 < group <= block_m // 16 else 1  # powers of two here
    consts: dict[str, Any] = {
        "BLOCK_SIZE": 16, "BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_D": head_dim,
        "GROUP_TILE": group_tile, "EVEN_D": True, "UPCAST": False, "IEEE": elem == "fp32",
        "SPLIT": tma, "TMA": tma,
    }  # fmt: skip
    descriptors = {}
    if tma:
        descriptors = {n: f"tensordesc<{elem}[{block_n}, {head_dim}]>" for n in ("k_desc", "v_desc")}
    else:
        consts.update(k_desc=None, v_desc=None)
    smem = shared_bytes(
        prefill._paged_prefill_attention_kernel, consts, elem, warps, stages, descriptors
    )
    return {"kernel": "prefill", "dtype": elem, "head_dim": head_dim, "tma": tma, "shared": smem}


def hopper_case(elem: str, head_dim: int, group: int) -> dict[str, Any]:
    """The warp-specialized Gluon prefill kernel (the split path's default on sm_90)."""
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon._runtime import GluonASTSource

    block_n, stages = hopper.DEFAULT_TILES
    layout = gl.NVMMASharedLayout.get_default_for(
        [block_n, head_dim], gl.bfloat16 if elem == "bf16" else gl.float16
    )
    consts: dict[str, Any] = {
        "BLOCK_SIZE": 16, "BLOCK_N": block_n, "HEAD_D": head_dim, "GROUP_TILE": group, "STAGES": stages,
        "CONSUMER_REGS": 240, "PRODUCER_REGS": 24,
    }  # fmt: skip
    descriptors = {n: f"tensordesc<{elem}[{block_n}, {head_dim}],{layout!r}>" for n in ("k_desc", "v_desc")}
    descriptors |= {n: f"tensordesc<{elem}[16, {head_dim}],{layout!r}>" for n in ("kc_desc", "vc_desc")}
    smem = shared_bytes(
        hopper._prefill_attention_hopper_kernel, consts, elem, 4, 1, descriptors, GluonASTSource
    )
    return {"kernel": "prefill_hopper", "dtype": elem, "head_dim": head_dim, "shared": smem}


def decode_case(elem: str, head_dim: int) -> dict[str, Any]:
    consts = {
        "BLOCK_SIZE": 16, "BLOCK_G": 16, "BLOCK_D": head_dim, "BLOCK_N": 64 if head_dim <= 128 else 32,
        "SPLIT": True, "EVEN_D": True, "UPCAST": False, "IEEE": elem == "fp32",
    }  # fmt: skip
    smem = shared_bytes(decode._paged_decode_attention_kernel, consts, elem, 4, 2)
    return {"kernel": "decode", "dtype": elem, "head_dim": head_dim, "shared": smem}


def main() -> None:
    cases = [
        lambda: prefill_case("bf16", 2, 128, 4, tma=False),
        lambda: prefill_case("bf16", 2, 128, 4, tma=True),
        lambda: prefill_case("fp32", 4, 128, 1, tma=False),
        lambda: decode_case("bf16", 128),
        lambda: hopper_case("bf16", 128, 4),
        lambda: hopper_case("fp16", 64, 1),
    ]
    for case in cases:
        print(json.dumps(case()), flush=True)


if __name__ == "__main__":
    main()
