"""KV-cache blocks: the bookkeeping of which cache slots each request owns.

Every chip that holds layers reserved the same number of slots (the compiler's `kv_tokens`), so one block
table serves all chips: a request's block ids index the same slots in every layer's cache on every chip.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


class BlockAllocator:
    def __init__(self, n_blocks: int, block_tokens: int) -> None:
        self.n_blocks = n_blocks
        self.block_tokens = block_tokens
        self._free = list(range(n_blocks - 1, -1, -1))  # a stack: lowest ids are handed out first

    @property
    def free_blocks(self) -> int:
        return len(self._free)

    @property
    def used_blocks(self) -> int:
        return self.n_blocks - len(self._free)

    @property
    def capacity_tokens(self) -> int:
        return self.n_blocks * self.block_tokens

    def blocks_for(self, n_tokens: int) -> int:
        return -(-n_tokens // self.block_tokens)

    def allocate(self, n_tokens: int) -> list[int] | None:
        """Blocks for n_tokens, or None (and nothing taken) when they are not free."""
        need = self.blocks_for(n_tokens)
        if need > len(self._free):
            return None
        return [self._free.pop() for _ in range(need)]

    def free(self, blocks: list[int]) -> None:
        self._free.extend(reversed(blocks))

    def slots(self, blocks: list[int], n_positions: int) -> NDArray[np.int64]:
        """Cache slot of each position 0 .. n_positions - 1 of a request holding `blocks`."""
        pos = np.arange(n_positions, dtype=np.int64)
        table = np.asarray(blocks, dtype=np.int64)
        return table[pos // self.block_tokens] * self.block_tokens + pos % self.block_tokens
