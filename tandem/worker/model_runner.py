"""Turns a ScheduleOutput into tensors, runs the model and samples.

The only part of the engine that touches torch. It owns the weights and the
paged KV cache, which is sized once at start-up from a block count or a byte
budget and never grown.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from tandem.models.attention import AttentionMetadata
from tandem.models.config import ModelConfig, load_config
from tandem.models.llama import LlamaForCausalLM
from tandem.models.weights import iter_weights
from tandem.worker.decode_graphs import DecodeGraphs
from tandem.worker.sampler import SampleSpec, sample
from tandem.worker.scheduler import ScheduleOutput

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev


def resolve_dtype(dtype: str, cfg: ModelConfig, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        # CPU matmuls in half precision are slow and imprecise; serve in fp32 there.
        return torch.float32 if device.type == "cpu" else _DTYPES.get(cfg.torch_dtype, torch.bfloat16)
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of auto, {', '.join(_DTYPES)}; got {dtype!r}")
    return _DTYPES[dtype]


@dataclass(frozen=True)
class StepTiming:
    seconds: float
    num_tokens: int
    decode_only: bool


class ModelRunner:
    def __init__(
        self,
        model_dir: str | Path,
        *,
        dtype: str,
        device: str,
        block_size: int,
        max_model_len: int | None,
        num_kv_blocks: int | None,
        kv_cache_bytes: int | None,
        load_format: str = "safetensors",
        cuda_graph_max_batch: int = 0,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.config = load_config(self.model_dir)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.config, self.device)
        cfg = self.config
        limit = cfg.max_position_embeddings
        if cfg.sliding_window is not None:
            # Attention here is full-context; stay within the window to be exact.
            limit = min(limit, cfg.sliding_window)
        self.max_model_len = min(max_model_len or limit, limit)
        self.block_size = block_size

        torch.manual_seed(0)
        with torch.device("meta"):
            model = LlamaForCausalLM(cfg, self.max_model_len)
        model = model.to_empty(device=self.device).to(self.dtype)
        if load_format == "dummy":
            _random_init(model)
        elif load_format == "safetensors":
            model.load_weights(iter_weights(self.model_dir, self.dtype, self.device), str(self.model_dir))
        else:
            raise ValueError(f"load_format must be safetensors or dummy, got {load_format!r}")
        model.init_rope(self.device)
        self.model = model.eval()

        self.num_kv_blocks = self._size_kv_pool(num_kv_blocks, kv_cache_bytes)
        shape = (self.num_kv_blocks, block_size, cfg.num_key_value_heads, cfg.head_dim)
        self.kv_caches: list[tuple[torch.Tensor, torch.Tensor]] = [
            (
                torch.zeros(shape, dtype=self.dtype, device=self.device),
                torch.zeros(shape, dtype=self.dtype, device=self.device),
            )
            for _ in range(cfg.num_hidden_layers)
        ]
        self.graphs: DecodeGraphs | None = None
        if cuda_graph_max_batch > 0 and self.device.type == "cuda":
            self.graphs = DecodeGraphs(
                self.model, self.kv_caches, cuda_graph_max_batch,
                -(-self.max_model_len // block_size), self.device,
            )  # fmt: skip
            self.graphs.capture()
        log.info(
            "model %s on %s/%s: %d KV blocks of %d tokens (%.1f MiB)",
            self.model_dir.name, self.device, self.dtype, self.num_kv_blocks, block_size,
            self.kv_cache_bytes / 2**20,
        )

    # ----- sizing --------------------------------------------------------
    @property
    def bytes_per_block(self) -> int:
        return self.block_size * self.config.kv_bytes_per_token(torch.finfo(self.dtype).bits // 8)

    @property
    def kv_cache_bytes(self) -> int:
        return self.num_kv_blocks * self.bytes_per_block

    def _size_kv_pool(self, num_blocks: int | None, budget: int | None) -> int:
        if num_blocks is not None:
            if num_blocks < 1:
                raise ValueError(f"num_kv_blocks must be >= 1, got {num_blocks}")
            return num_blocks
        if budget is None:
            if self.device.type == "cuda":
                free, _total = torch.cuda.mem_get_info(self.device)
                # Leave room for activations and CUDA graphs.
                budget = int(free * 0.85) - 2 * 2**30
            else:
                budget = 256 * 2**20
        blocks = budget // self.bytes_per_block
        if blocks < 1:
            raise ValueError(f"KV cache budget of {budget} bytes holds no block of {self.bytes_per_block} bytes")
        # More blocks than any number of full-length sequences could use is waste.
        return int(min(blocks, 4096 * max(1, self.max_model_len // self.block_size)))

    # ----- execution -----------------------------------------------------
    @torch.inference_mode()
    def execute(
        self,
        sched: ScheduleOutput,
        specs: dict[str, SampleSpec],
        shared_generator: torch.Generator,
        on_layer_stored: Callable[[int], None] | None = None,
    ) -> dict[str, int]:
        """Run one step; return the sampled token of each sequence that samples."""
        if self._graphable(sched, on_layer_stored):
            hidden, sample_ids = self._run_graph(sched)
            logits = self.model.compute_logits(hidden)
        else:
            inputs = self._prepare(sched, on_layer_stored)
            hidden = self.model(inputs.input_ids, inputs.positions, self.kv_caches, inputs.meta)
            if not inputs.sample_ids:
                return {}
            sample_ids = inputs.sample_ids
            logits = self.model.compute_logits(hidden[inputs.logits_indices])
        tokens = sample(logits, [specs[r] for r in sample_ids], shared_generator)
        return dict(zip(sample_ids, tokens, strict=True))

    def _graphable(self, sched: ScheduleOutput, on_layer_stored: Callable[[int], None] | None) -> bool:
        return (
            self.graphs is not None
            and on_layer_stored is None
            and sched.decode_only
            and self.graphs.fits(len(sched.seqs), max(len(s.block_ids) for s in sched.seqs))
        )

    def _run_graph(self, sched: ScheduleOutput) -> tuple[torch.Tensor, list[str]]:
        assert self.graphs is not None
        bs = self.block_size
        n = len(sched.seqs)
        width = max(len(s.block_ids) for s in sched.seqs)
        tables = torch.zeros((n, width), dtype=torch.int32)
        pos = [s.start_pos for s in sched.seqs]
        for i, s in enumerate(sched.seqs):
            tables[i, : len(s.block_ids)] = torch.tensor(s.block_ids, dtype=torch.int32)
        hidden = self.graphs.run(
            torch.tensor([s.token_ids[0] for s in sched.seqs], dtype=torch.int64),
            torch.tensor(pos, dtype=torch.int64),
            torch.tensor([s.block_ids[p // bs] * bs + p % bs for s, p in zip(sched.seqs, pos, strict=True)], dtype=torch.int64),
            torch.tensor([p + 1 for p in pos], dtype=torch.int32),
            tables,
        )
        return hidden, [s.request_id for s in sched.seqs]

    def _prepare(self, sched: ScheduleOutput, on_layer_stored: Callable[[int], None] | None) -> _Inputs:
        bs = self.block_size
        ids: list[int] = []
        pos: list[int] = []
        slots: list[int] = []
        qsl = [0]
        seq_lens: list[int] = []
        logits_idx: list[int] = []
        sample_ids: list[str] = []
        max_blocks = max(len(s.block_ids) for s in sched.seqs)
        tables = torch.zeros((len(sched.seqs), max_blocks), dtype=torch.int32)
        for i, s in enumerate(sched.seqs):
            n = len(s.token_ids)
            ids.extend(s.token_ids)
            p = range(s.start_pos, s.start_pos + n)
            pos.extend(p)
            slots.extend(s.block_ids[x // bs] * bs + x % bs for x in p)
            qsl.append(qsl[-1] + n)
            seq_lens.append(s.start_pos + n)
            tables[i, : len(s.block_ids)] = torch.tensor(s.block_ids, dtype=torch.int32)
            if s.sample:
                logits_idx.append(qsl[-1] - 1)
                sample_ids.append(s.request_id)
        dev = self.device
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev),
            query_start_loc=torch.tensor(qsl, dtype=torch.int32, device=dev),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=dev),
            block_tables=tables.to(dev),
            max_query_len=max(qsl[i + 1] - qsl[i] for i in range(len(seq_lens))),
            max_seq_len=max(seq_lens),
            decode_only=sched.decode_only,
            on_layer_stored=on_layer_stored,
        )
        return _Inputs(
            input_ids=torch.tensor(ids, dtype=torch.int64, device=dev),
            positions=torch.tensor(pos, dtype=torch.int64, device=dev),
            meta=meta,
            logits_indices=torch.tensor(logits_idx, dtype=torch.int64, device=dev),
            sample_ids=sample_ids,
        )

    # ----- KV export / import --------------------------------------------
    def block_index(self, block_ids: Sequence[int]) -> torch.Tensor:
        """Block ids as a device tensor (make it before a forward: the host-to-device
        copy synchronizes, which must not happen between layers)."""
        return torch.tensor(block_ids, dtype=torch.int64, device=self.device)

    def read_blocks(self, layer: int, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, object]:
        """Private copies of one layer's blocks ([n, block_size, kv_heads, head_dim]
        each) and, on CUDA, an event that completes when they are made."""
        k, v = self.kv_caches[layer]
        k_out, v_out = k.index_select(0, index), v.index_select(0, index)
        ready = None
        if self.device.type == "cuda":
            ready = torch.cuda.Event()
            ready.record()
        return k_out, v_out, ready

    def write_blocks(
        self, layer: int, block_ids: Sequence[int], k: torch.Tensor, v: torch.Tensor
    ) -> None:
        kc, vc = self.kv_caches[layer]
        expected = (len(block_ids), *kc.shape[1:])
        if tuple(k.shape) != expected or tuple(v.shape) != expected:
            raise ValueError(f"KV chunk for layer {layer} has shape {tuple(k.shape)}, expected {expected}")
        idx = torch.tensor(block_ids, dtype=torch.int64, device=self.device)
        kc.index_copy_(0, idx, k.to(device=self.device, dtype=kc.dtype))
        vc.index_copy_(0, idx, v.to(device=self.device, dtype=vc.dtype))

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


@dataclass(frozen=True)
class _Inputs:
    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    meta: AttentionMetadata
    logits_indices: torch.Tensor  # [num_sampled]
    sample_ids: list[str]



@torch.no_grad()
def _random_init(model: LlamaForCausalLM) -> None:
    """Random weights in place (benchmarks of model shapes without a checkpoint)."""
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.fill_(1.0)
        elif name.endswith("bias"):
            p.zero_()
        else:
            p.normal_(0.0, 0.02)
