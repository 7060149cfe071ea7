"""Head sizes that are not powers of two (12, 24, 40, 80, 96), with and without QK
norm (Qwen3) and QKV bias (Qwen2): greedy tokens equal transformers' on CPU (float32),
and the CUDA path (Triton kernels) equals the CPU path in float32 and stays within
bf16 tolerance of the plain-PyTorch ops in bfloat16. A Qwen3 model with head_dim 24
once gave other tokens on CUDA: k after QK norm is a copy of its own while v is a
view of the projection output, and the prefill kernel read v with k's strides."""

from __future__ import annotations

import pytest
import torch

from tandem.sampling import SamplingParams
from tandem.worker.config import EngineConfig
from tandem.worker.engine import Engine
from tests.worker.conftest import ModelFactory, hf_greedy, mixed_prompts

HEAD_DIMS = [12, 24, 40, 80, 96]
ARCHS = ["llama", "qwen2", "qwen3"]
NEW = 6
# Longest prompt (with the shared prefix) 44 > the 16-token chunk: chunked prefill and
# prefix hits both run, with decode rows in the same steps as prefill chunks.
PROMPTS = mixed_prompts(seed=3, vocab=1000, lengths=(5, 23, 11, 30), shared_prefix=14)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def greedy(engine: Engine) -> list[list[int]]:
    p = SamplingParams(max_tokens=NEW, temperature=0.0, ignore_eos=True)
    for i, pr in enumerate(PROMPTS):
        engine.add_request(f"r{i}", pr, p)
    got: dict[str, list[int]] = {f"r{i}": [] for i in range(len(PROMPTS))}
    while engine.has_work():
        for o in engine.step():
            got[o.request_id].extend(o.new_token_ids)
    assert engine.pool.num_used == 0
    return [got[f"r{i}"] for i in range(len(PROMPTS))]


def cpu_engine(model: object) -> Engine:
    return Engine(EngineConfig(str(model), device="cpu", dtype="float32", num_kv_blocks=128,
                               max_num_batched_tokens=16))  # fmt: skip


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("arch", ARCHS)
def test_cpu_matches_transformers(tiny_model: ModelFactory, arch: str, head_dim: int) -> None:
    model = tiny_model(arch, head_dim=head_dim)
    assert greedy(cpu_engine(model)) == hf_greedy(model, PROMPTS, NEW)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("arch", ARCHS)
def test_cuda_matches_cpu_in_float32(tiny_model: ModelFactory, arch: str, head_dim: int) -> None:
    model = tiny_model(arch, head_dim=head_dim)
    cpu = greedy(cpu_engine(model))
    for graphs in (0, 8):
        gpu = Engine(EngineConfig(str(model), device="cuda", dtype="float32", num_kv_blocks=128,
                                  max_num_batched_tokens=16, cuda_graph_max_batch=graphs))  # fmt: skip
        assert greedy(gpu) == cpu, f"graphs={graphs}"


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("arch", ARCHS)
def test_cuda_bf16_logits_match_the_reference_ops(
    tiny_model: ModelFactory, arch: str, head_dim: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Last-position logits of every prefill chunk and decode step, Triton kernels vs the
    plain-PyTorch ops on the same GPU, both in bfloat16."""
    from tandem.kernels import ops

    model = tiny_model(arch, head_dim=head_dim)

    def logits() -> list[torch.Tensor]:
        engine = Engine(EngineConfig(str(model), device="cuda", dtype="bfloat16", num_kv_blocks=128,
                                     max_num_batched_tokens=16, cuda_graph_max_batch=0))  # fmt: skip
        seen: list[torch.Tensor] = []
        real = engine.runner.model.compute_logits

        def spy(hidden: torch.Tensor) -> torch.Tensor:
            out = real(hidden)
            seen.append(out.float().cpu())
            return out

        engine.runner.model.compute_logits = spy  # type: ignore[method-assign]
        # Teacher-forced by the float32 CPU tokens, so both runs see the same inputs.
        for i, pr in enumerate(PROMPTS):
            engine.add_request(
                f"r{i}", pr, SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
            )
        while engine.has_work():
            engine.step()
        return seen

    triton = logits()
    with monkeypatch.context() as m:
        m.setattr(ops, "use_triton", lambda t: False)
        ref = logits()
    assert len(triton) == len(ref) > 0
    for t, r in zip(triton, ref, strict=True):
        assert ((t - r).norm() / r.norm()).item() < 3e-2
