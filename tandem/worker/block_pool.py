"""Paged KV block pool with prefix caching over full blocks.

Pure Python: deals in block ids and token ids only. A block is either in use
(ref_count > 0) or free. Free blocks sit in one LRU queue; a free block that
still holds a cached full block of tokens keeps its hash until it is handed
out again, so a later request with the same prefix can take it back (a
prefix-cache hit) instead of recomputing it. Allocation evicts from the
least recently freed end.

Block hashes chain: hash(block i) covers the hash of block i-1 and the tokens
of block i, so equal hashes mean equal whole prefixes (as in vLLM's automatic
prefix caching and SGLang's radix cache, flattened to blocks).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from tandem.worker.errors import NoCapacity

BlockHash = bytes


def hash_block(parent: BlockHash | None, tokens: Sequence[int]) -> BlockHash:
    """Stable across processes (the router may compute the same chain)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(parent or b"\0" * 16)
    h.update(b"".join(t.to_bytes(4, "little", signed=False) for t in tokens))
    return h.digest()


def hash_chain(token_ids: Sequence[int], block_size: int, num_blocks: int) -> list[BlockHash]:
    """Hashes of the first `num_blocks` full blocks of `token_ids`."""
    out: list[BlockHash] = []
    parent: BlockHash | None = None
    for i in range(num_blocks):
        parent = hash_block(parent, token_ids[i * block_size : (i + 1) * block_size])
        out.append(parent)
    return out


@dataclass
class _Block:
    block_id: int
    ref_count: int = 0
    block_hash: BlockHash | None = None


class BlockPool:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        if block_size < 1 or block_size & (block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._blocks = [_Block(i) for i in range(num_blocks)]
        # LRU order: first = evicted first. Values unused (OrderedDict as ordered set).
        self._free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self._cached: dict[BlockHash, int] = {}

    # ----- queries -------------------------------------------------------
    @property
    def num_free(self) -> int:
        """Blocks that can be handed out now (free, cached or not)."""
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    @property
    def num_cached(self) -> int:
        return len(self._cached)

    def ref_count(self, block_id: int) -> int:
        return self._blocks[block_id].ref_count

    def match_prefix(self, token_ids: Sequence[int], max_blocks: int | None = None) -> list[int]:
        """Block ids holding the longest cached prefix of full blocks.

        Takes no references. `max_blocks` caps the match (callers keep at least
        one token to compute so that there are logits to sample from).
        """
        if not self.enable_prefix_caching:
            return []
        n = len(token_ids) // self.block_size
        if max_blocks is not None:
            n = min(n, max_blocks)
        hits: list[int] = []
        parent: BlockHash | None = None
        for i in range(n):
            parent = hash_block(parent, token_ids[i * self.block_size : (i + 1) * self.block_size])
            block_id = self._cached.get(parent)
            if block_id is None:
                break
            hits.append(block_id)
        return hits

    # ----- mutations -----------------------------------------------------
    def take(self, block_ids: Sequence[int]) -> None:
        """Add a reference to each (cached) block, e.g. after a prefix hit."""
        for bid in block_ids:
            blk = self._blocks[bid]
            if blk.ref_count == 0:
                del self._free[bid]
            blk.ref_count += 1

    def allocate(self, n: int) -> list[int]:
        """Hand out `n` blocks with ref_count 1, evicting cached ones LRU-first."""
        if n > len(self._free):
            raise NoCapacity(f"need {n} KV blocks, {len(self._free)} free")
        out = []
        for _ in range(n):
            bid, _ = self._free.popitem(last=False)
            blk = self._blocks[bid]
            if blk.block_hash is not None:
                if self._cached.get(blk.block_hash) == bid:
                    del self._cached[blk.block_hash]
                blk.block_hash = None
            blk.ref_count = 1
            out.append(bid)
        return out

    def free(self, block_ids: Sequence[int]) -> None:
        """Drop one reference from each block. Blocks are released tail-first so
        that a sequence's last blocks (least likely to be shared) are evicted
        before its first ones."""
        for bid in reversed(block_ids):
            blk = self._blocks[bid]
            assert blk.ref_count > 0, f"double free of block {bid}"
            blk.ref_count -= 1
            if blk.ref_count == 0:
                self._free[bid] = None

    def cache_blocks(
        self, block_ids: Sequence[int], token_ids: Sequence[int], start: int, end: int
    ) -> None:
        """Register full blocks [start, end) of a sequence in the prefix cache."""
        if not self.enable_prefix_caching or end <= start:
            return
        parent = self._blocks[block_ids[start - 1]].block_hash if start > 0 else None
        if start > 0 and parent is None:
            # The chain is broken (an earlier block was never cached): recompute it.
            parent = hash_chain(token_ids, self.block_size, start)[-1]
        for i in range(start, end):
            tokens = token_ids[i * self.block_size : (i + 1) * self.block_size]
            parent = hash_block(parent, tokens)
            blk = self._blocks[block_ids[i]]
            if blk.block_hash is None:
                blk.block_hash = parent
                self._cached.setdefault(parent, blk.block_id)

    def reset_prefix_cache(self) -> None:
        for blk in self._blocks:
            blk.block_hash = None
        self._cached.clear()
