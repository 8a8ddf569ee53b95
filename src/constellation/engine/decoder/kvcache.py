"""Paged KV cache: fixed-size blocks preallocated within a byte budget, handed out per sequence.

Sequences hold block tables; a step writes new keys/values by flat index
(block * block_size + offset) and gathers by table.
"""

from __future__ import annotations

from collections import deque

import torch
from torch import Tensor

from constellation.errors import InvalidInput


class KVCache:
    """k/v tensors [layers, blocks, block_size, kv_heads, head_dim], allocated once."""

    def __init__(
        self,
        *,
        n_layers: int,
        n_kv_heads: int,
        head_dim: int,
        budget_bytes: int,
        block_size: int = 16,
        dtype: torch.dtype = torch.float32,
        device: str = "cpu",
    ) -> None:
        elem = torch.empty((), dtype=dtype).element_size()
        self.block_bytes = 2 * n_layers * block_size * n_kv_heads * head_dim * elem
        self.n_blocks = budget_bytes // self.block_bytes
        if self.n_blocks < 1:
            raise InvalidInput(
                f"kv_cache_bytes={budget_bytes} holds no {block_size}-token block of this model "
                f"({self.block_bytes} bytes); raise EngineLimits.kv_cache_bytes"
            )
        self.block_size = block_size
        shape = (n_layers, self.n_blocks, block_size, n_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self._free: deque[int] = deque(range(self.n_blocks))

    @property
    def free_blocks(self) -> int:
        return len(self._free)

    @property
    def capacity_tokens(self) -> int:
        return self.n_blocks * self.block_size

    def blocks_for(self, n_tokens: int) -> int:
        return -(-n_tokens // self.block_size)

    def grow(self, table: list[int], n_tokens: int) -> bool:
        """Extend `table` so it covers `n_tokens`; False (and no change) if blocks are short."""
        need = self.blocks_for(n_tokens) - len(table)
        if need > len(self._free):
            return False
        table.extend(self._free.popleft() for _ in range(max(need, 0)))
        return True

    def release(self, table: list[int]) -> None:
        self._free.extend(table)
        table.clear()

    def flat_index(self, table: list[int], start: int, end: int) -> list[int]:
        """Flat index into the cache of positions start..end-1 of a sequence with block `table`."""
        bs = self.block_size
        return [table[p // bs] * bs + p % bs for p in range(start, end)]

    def write(self, layer: int, k: Tensor, v: Tensor, kv_index: Tensor) -> None:
        """k/v: [T, Hkv, D] stored at flat indices [T]."""
        self.k[layer].view(-1, *k.shape[1:]).index_copy_(0, kv_index, k)
        self.v[layer].view(-1, *v.shape[1:]).index_copy_(0, kv_index, v)

    def gather(self, layer: int, block_tables: Tensor, length: int) -> tuple[Tensor, Tensor]:
        """block_tables [B, nb] -> keys, values [B, Hkv, length, D]."""
        return self._gather(self.k[layer], block_tables, length), self._gather(
            self.v[layer], block_tables, length
        )

    @staticmethod
    def _gather(kv: Tensor, block_tables: Tensor, length: int) -> Tensor:
        b, nb = block_tables.shape
        # index_select over whole flattened blocks is a memcpy per block; advanced indexing on
        # the 4-D tensor is several times slower.
        flat = kv.view(kv.shape[0], -1)  # [blocks, bs * Hkv * D]
        x = flat.index_select(0, block_tables.reshape(-1))  # [B * nb, bs * Hkv * D]
        x = x.view(b, nb * kv.shape[1], *kv.shape[2:])[:, :length]  # [B, L, Hkv, D]
        return x.transpose(1, 2)  # [B, Hkv, L, D]
