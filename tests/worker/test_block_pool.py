"""BlockPool: exact block ids for allocation, freeing, prefix hits and LRU eviction."""

from __future__ import annotations

import pytest

from tandem.worker.block_pool import BlockPool, hash_chain
from tandem.worker.errors import NoCapacity


def test_allocate_hands_out_lowest_ids_first_and_free_returns_tail_first() -> None:
    pool = BlockPool(6, 4)
    assert pool.allocate(3) == [0, 1, 2]
    assert pool.allocate(1) == [3]
    pool.free([0, 1, 2])
    assert (pool.num_used, pool.num_free) == (1, 5)
    # Free queue after: 4, 5, then 2, 1, 0 (a sequence's tail is evicted first).
    assert pool.allocate(5) == [4, 5, 2, 1, 0]


def test_allocate_beyond_capacity_raises_and_takes_nothing() -> None:
    pool = BlockPool(4, 4)
    pool.allocate(3)
    with pytest.raises(NoCapacity, match="need 2 KV blocks, 1 free"):
        pool.allocate(2)
    assert pool.num_free == 1


def test_prefix_hit_after_free_and_refcount_sharing() -> None:
    pool = BlockPool(8, 4)
    tokens = list(range(10))  # two full blocks + 2 tokens
    blocks = pool.allocate(3)
    pool.cache_blocks(blocks, tokens, 0, 2)
    assert pool.match_prefix(tokens) == blocks[:2]
    # Same first block, different second block: one-block hit.
    other = [*tokens[:4], 99, 98, 97, 96]
    assert pool.match_prefix(other) == blocks[:1]
    pool.free(blocks)
    assert pool.num_free == 8
    # Still cached while free; taking it back removes it from the free queue.
    hit = pool.match_prefix(tokens)
    assert hit == [0, 1]
    pool.take(hit)
    pool.take(hit)
    assert pool.ref_count(0) == 2 and pool.num_free == 6
    pool.free(hit)
    assert pool.ref_count(0) == 1 and pool.num_free == 6


def test_eviction_is_lru_and_drops_the_hash() -> None:
    pool = BlockPool(3, 2)
    a = pool.allocate(1)
    pool.cache_blocks(a, [1, 2], 0, 1)
    b = pool.allocate(1)
    pool.cache_blocks(b, [3, 4], 0, 1)
    pool.free(a)
    pool.free(b)
    # Free queue: block 2 (never used), then a=0, then b=1.
    assert pool.allocate(2) == [2, 0]
    assert pool.match_prefix([1, 2]) == []  # evicted
    assert pool.match_prefix([3, 4]) == [1]  # still cached
    assert pool.num_cached == 1


def test_match_prefix_respects_cap_and_disabled_cache() -> None:
    pool = BlockPool(4, 2)
    blocks = pool.allocate(2)
    pool.cache_blocks(blocks, [5, 6, 7, 8], 0, 2)
    assert pool.match_prefix([5, 6, 7, 8], max_blocks=1) == [blocks[0]]
    off = BlockPool(4, 2, enable_prefix_caching=False)
    ob = off.allocate(2)
    off.cache_blocks(ob, [5, 6, 7, 8], 0, 2)
    assert off.match_prefix([5, 6, 7, 8]) == []


def test_hash_chain_depends_on_the_whole_prefix() -> None:
    h1 = hash_chain([1, 2, 3, 4], 2, 2)
    h2 = hash_chain([9, 2, 3, 4], 2, 2)
    assert h1[1] != h2[1]  # same second block, different first: different chain
    assert hash_chain([1, 2, 3, 4], 2, 2) == h1  # stable


@pytest.mark.parametrize(("num_blocks", "block_size"), [(0, 16), (4, 3), (4, 0)])
def test_bad_geometry_is_rejected(num_blocks: int, block_size: int) -> None:
    with pytest.raises(ValueError):
        BlockPool(num_blocks, block_size)


def test_double_free_is_caught() -> None:
    pool = BlockPool(2, 2)
    b = pool.allocate(1)
    pool.free(b)
    with pytest.raises(AssertionError, match="double free"):
        pool.free(b)
