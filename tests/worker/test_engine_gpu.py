"""On CUDA (Triton kernels, CUDA graphs): greedy output unchanged versus the
reference path and transformers. Skipped without a GPU."""

from __future__ import annotations

from pathlib import Path

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


def _is_sm90() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


# A small Llama whose attention the Hopper prefill kernel takes (bf16, head_dim 64, group 4).
_HOPPER_SHAPE = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 1024,
    "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
    "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 64,
    "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "bos_token_id": 0,
    "eos_token_id": 1, "hidden_act": "silu",
}  # fmt: skip


@pytest.mark.skipif(not _is_sm90(), reason="needs an sm_90 GPU")
def test_model_prefill_through_hopper_kernel_matches_reference_ops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model's prefill call path (rotated k written back into the qkv
    projection, K/V as strided views of it) through the Gluon kernel: a prompt,
    then a chunk whose 300 earlier positions come from the paged cache, next to
    a second prompt. Hidden states match the plain-PyTorch ops and the Triton
    kernel within bf16 tolerance."""
    import json

    from tandem.kernels import ops
    from tandem.kernels import prefill_attention_hopper as hopper
    from tandem.models.attention import AttentionMetadata
    from tandem.worker.model_runner import ModelRunner

    (tmp_path / "config.json").write_text(json.dumps(_HOPPER_SHAPE))
    runner = ModelRunner(
        str(tmp_path), dtype="bfloat16", device="cuda", block_size=16, max_model_len=1024,
        num_kv_blocks=128, kv_cache_bytes=None, load_format="dummy",
    )  # fmt: skip
    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(5)
    # Sequence 0: blocks 0..31 (prompt 300, then a 200-token chunk); sequence 1: blocks 40..49.
    steps = [([(0, 0, 300), (1, 0, 150)]), ([(0, 300, 200)])]
    tables = {0: list(range(32)), 1: list(range(40, 50))}
    tokens = {0: torch.randint(2, 1024, (500,), generator=gen), 1: torch.randint(2, 1024, (150,), generator=gen)}

    def forward_all() -> list[torch.Tensor]:
        for k, v in runner.kv_caches:
            k.zero_()
            v.zero_()
        outs = []
        for step in steps:
            ids, pos, slots, qsl, lens = [], [], [], [0], []
            for s, start, n in step:
                ids += tokens[s][start : start + n].tolist()
                pos += list(range(start, start + n))
                slots += [tables[s][p // 16] * 16 + p % 16 for p in range(start, start + n)]
                qsl.append(qsl[-1] + n)
                lens.append(start + n)
            width = max(len(tables[s]) for s, _, _ in step)
            table = torch.tensor([tables[s] + [0] * (width - len(tables[s])) for s, _, _ in step], dtype=torch.int32)
            meta = AttentionMetadata(
                slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev),
                query_start_loc=torch.tensor(qsl, dtype=torch.int32, device=dev),
                seq_lens=torch.tensor(lens, dtype=torch.int32, device=dev),
                block_tables=table.to(dev), max_query_len=max(n for _, _, n in step),
                max_seq_len=max(lens), decode_only=False,
            )  # fmt: skip
            with torch.inference_mode():
                outs.append(
                    runner.model(
                        torch.tensor(ids, device=dev), torch.tensor(pos, device=dev), runner.kv_caches, meta
                    ).float()
                )
        return outs

    calls = []
    real = hopper.prefill_attention_hopper

    def spy(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    with monkeypatch.context() as m:
        m.setattr(hopper, "prefill_attention_hopper", spy)
        gluon = forward_all()
    assert len(calls) == 2 * len(steps)  # every layer of every step took the Gluon kernel
    with monkeypatch.context() as m:
        m.setattr(hopper, "supported", lambda *a: False)
        triton = forward_all()
    with monkeypatch.context() as m:
        m.setattr(ops, "use_triton", lambda t: False)
        ref = forward_all()
    for g, t, r in zip(gluon, triton, ref, strict=True):
        assert ((g - r).norm() / r.norm()).item() < 2e-2
        assert ((g - t).norm() / t.norm()).item() < 2e-2
