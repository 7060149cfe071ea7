"""CUDA graphs for decode steps.

A decode step of a large model is hundreds of small kernel launches; at small
batch the launch overhead alone rivals the weight-read time. Each batch-size
bucket gets one captured graph over static input buffers; a step pads its
batch up to the bucket (padded rows store nothing: slot -1) and replays.
All buckets share one memory pool, captured largest first.
"""

from __future__ import annotations

import logging
import time

import torch

from tandem.models.attention import AttentionMetadata
from tandem.models.llama import LlamaForCausalLM

log = logging.getLogger(__name__)


def buckets(max_batch: int) -> list[int]:
    """1, 2, 4, 8, then every multiple of 8 up to max_batch (inclusive)."""
    out = [b for b in (1, 2, 4, 8) if b <= max_batch]
    out += list(range(16, max_batch + 1, 8))
    if out[-1] != max_batch:
        out.append(max_batch)
    return out


def bucket_for(n: int, sizes: list[int]) -> int | None:
    for b in sizes:
        if b >= n:
            return b
    return None


class DecodeGraphs:
    def __init__(
        self,
        model: LlamaForCausalLM,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        max_batch: int,
        max_blocks: int,
        device: torch.device,
    ) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.sizes = buckets(max_batch)
        self.max_blocks = max_blocks
        i32, i64 = torch.int32, torch.int64
        self.input_ids = torch.zeros(max_batch, dtype=i64, device=device)
        self.positions = torch.zeros(max_batch, dtype=i64, device=device)
        self.slot_mapping = torch.full((max_batch,), -1, dtype=i64, device=device)
        self.seq_lens = torch.ones(max_batch, dtype=i32, device=device)
        self.block_tables = torch.zeros((max_batch, max_blocks), dtype=i32, device=device)
        self.query_start_loc = torch.arange(max_batch + 1, dtype=i32, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}

    def _meta(self, bs: int) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:bs],
            query_start_loc=self.query_start_loc[: bs + 1],
            seq_lens=self.seq_lens[:bs],
            block_tables=self.block_tables[:bs],
            max_query_len=1,
            max_seq_len=self.max_blocks * self.kv_caches[0][0].shape[1],
            decode_only=True,
        )

    def _forward(self, bs: int) -> torch.Tensor:
        return self.model(self.input_ids[:bs], self.positions[:bs], self.kv_caches, self._meta(bs))

    @torch.inference_mode()
    def capture(self) -> None:
        t0 = time.perf_counter()
        pool = None
        for bs in sorted(self.sizes, reverse=True):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):  # compile Triton kernels and settle allocations outside capture
                    self._forward(bs)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[bs] = self._forward(bs)
            pool = graph.pool()
            self.graphs[bs] = graph
        torch.cuda.synchronize()
        log.info("captured %d decode graphs (batch <= %d) in %.1f s", len(self.graphs), self.sizes[-1], time.perf_counter() - t0)

    def fits(self, batch: int, blocks: int) -> bool:
        return batch <= self.sizes[-1] and blocks <= self.max_blocks

    @torch.inference_mode()
    def run(
        self,
        input_ids: torch.Tensor,  # [n] int64, CPU
        positions: torch.Tensor,  # [n] int64, CPU
        slot_mapping: torch.Tensor,  # [n] int64, CPU
        seq_lens: torch.Tensor,  # [n] int32, CPU
        block_tables: torch.Tensor,  # [n, w] int32, CPU, w <= max_blocks
    ) -> torch.Tensor:  # [n, hidden]
        n = input_ids.shape[0]
        bs = bucket_for(n, self.sizes)
        assert bs is not None
        self.input_ids[:n].copy_(input_ids, non_blocking=True)
        self.positions[:n].copy_(positions, non_blocking=True)
        self.slot_mapping[:n].copy_(slot_mapping, non_blocking=True)
        self.seq_lens[:n].copy_(seq_lens, non_blocking=True)
        self.block_tables[:n, : block_tables.shape[1]].copy_(block_tables, non_blocking=True)
        if bs > n:
            self.slot_mapping[n:bs].fill_(-1)
            self.seq_lens[n:bs].fill_(1)
        self.graphs[bs].replay()
        return self.outputs[bs][:n]
