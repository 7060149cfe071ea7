"""On CUDA (Triton kernels, CUDA graphs): greedy output unchanged versus the
reference path and transformers. Skipped without a GPU."""

from __future__ import annotations

import pytest
import torch

from tandem.sampling import SamplingParams
from tandem.worker.config import EngineConfig
from tandem.worker.engine import Engine
from tests.worker.conftest import ModelFactory, hf_greedy, mixed_prompts

pytestmark = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def run(engine: Engine, prompts: list[list[int]], new: int) -> list[list[int]]:
    p = SamplingParams(max_tokens=new, temperature=0.0, ignore_eos=True)
    for i, pr in enumerate(prompts):
        engine.add_request(f"r{i}", pr, p)
    got: dict[str, list[int]] = {f"r{i}": [] for i in range(len(prompts))}
    while engine.has_work():
        for o in engine.step():
            got[o.request_id].extend(o.new_token_ids)
    assert engine.pool.num_used == 0
    return [got[f"r{i}"] for i in range(len(prompts))]


@needs_cuda
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_cuda_engine_with_graphs_matches_cpu_reference_and_transformers(tiny_model: ModelFactory, arch: str) -> None:
    model = tiny_model(arch)
    prompts = mixed_prompts(seed=11, vocab=1000, lengths=(5, 17, 33, 8, 47, 3, 26, 12), shared_prefix=20)
    cpu = run(Engine(EngineConfig(str(model), device="cpu", num_kv_blocks=256, max_num_batched_tokens=16)), prompts, 10)
    for graphs in (0, 16):
        gpu = Engine(EngineConfig(str(model), device="cuda", dtype="float32", num_kv_blocks=256,
                                  max_num_batched_tokens=16, cuda_graph_max_batch=graphs))  # fmt: skip
        assert (gpu.runner.graphs is not None) == (graphs > 0)
        assert run(gpu, prompts, 10) == cpu
    assert hf_greedy(model, prompts, 10) == cpu
