"""The pair-merge loop SentencePiece and BPE vocabularies share (llama.cpp's llm_tokenizer_spm / _bpe).

Symbols sit in a linked list; a heap holds every adjacent pair that may merge, keyed by its priority and
then the left symbol's position, so the best pair merges first and the leftmost wins ties. Entries go stale
when a neighbour merges; they are recognised when popped (the pair no longer spells what was scored).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable


def merge_pairs(symbols: list[str], priority: Callable[[str, str], float | None]) -> list[str]:
    """Merges adjacent symbols while some pair has a priority (lower merges first; None: never merges) and
    returns the remaining symbols in order. `symbols` is consumed."""
    n = len(symbols)
    nxt = [*range(1, n), -1]
    prev = list(range(-1, n - 1))
    heap: list[tuple[float, int, int, str]] = []  # (priority, left, right, merged text)
    for i in range(n - 1):
        key = priority(symbols[i], symbols[i + 1])
        if key is not None:
            heap.append((key, i, i + 1, symbols[i] + symbols[i + 1]))
    heapq.heapify(heap)
    while heap:
        _, left, right, merged = heapq.heappop(heap)
        if nxt[left] != right or not symbols[left] or symbols[left] + symbols[right] != merged:
            continue
        symbols[left] = merged
        symbols[right] = ""  # absorbed into its left neighbour
        after = nxt[right]
        nxt[left] = after
        if after != -1:
            prev[after] = left
        for a, b in ((prev[left], left), (left, after)):
            if a != -1 and b != -1 and (key := priority(symbols[a], symbols[b])) is not None:
                heapq.heappush(heap, (key, a, b, symbols[a] + symbols[b]))
    return [s for s in symbols if s]
