"""Paged KV cache: block accounting within the byte budget and write/gather round trips."""

from __future__ import annotations

import pytest
import torch

from constellation.engine.decoder.kvcache import KVCache
from constellation.errors import InvalidInput


def _cache(blocks: int = 4) -> KVCache:
    per_block = 2 * 2 * 4 * 2 * 3 * 4  # k+v, layers, block, heads, head_dim, fp32
    return KVCache(n_layers=2, n_kv_heads=2, head_dim=3, budget_bytes=blocks * per_block, block_size=4)


def test_budget_sets_the_number_of_blocks() -> None:
    kv = _cache(5)
    assert kv.n_blocks == 5 and kv.capacity_tokens == 20
    with pytest.raises(InvalidInput, match="kv_cache_bytes"):
        KVCache(n_layers=2, n_kv_heads=2, head_dim=3, budget_bytes=10, block_size=4)


def test_grow_refuses_without_changing_then_release_returns_blocks() -> None:
    kv = _cache(3)
    a: list[int] = []
    b: list[int] = []
    assert kv.grow(a, 9)  # 3 blocks
    assert not kv.grow(b, 1)
    assert b == [] and kv.free_blocks == 0
    kv.release(a)
    assert a == [] and kv.free_blocks == 3
    assert kv.grow(b, 4) and len(b) == 1


def test_write_then_gather_returns_each_sequence_in_order() -> None:
    kv = _cache(4)
    t1: list[int] = []
    t2: list[int] = []
    kv.grow(t2, 3)  # interleave allocations so tables are not contiguous
    kv.grow(t1, 6)
    k1, k2 = torch.randn(6, 2, 3), torch.randn(3, 2, 3)
    index = torch.tensor(kv.flat_index(t1, 0, 6) + kv.flat_index(t2, 0, 3))
    kv.write(1, torch.cat([k1, k2]), torch.cat([k1, k2]) * 2, index)
    tables = torch.tensor([t1, [t2[0], 0]])  # [B, nb], padded
    keys, values = kv.gather(1, tables, 6)  # [B, H, L, D]
    assert torch.equal(keys[0].transpose(0, 1), k1)
    assert torch.equal(keys[1, :, :3].transpose(0, 1), k2)
    assert torch.equal(values[0].transpose(0, 1), 2 * k1)
