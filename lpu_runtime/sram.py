"""A chip's SRAM as an address space: aligned regions with a hard capacity.

The compiler allocates regions on an `SramArena` to decide every offset; a `Chip` then backs the same
regions with real bytes. Both refuse to pass the capacity, so nothing on a chip can exceed its SRAM.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from lpu_runtime.errors import SramOverflowError


class RegionKind(StrEnum):
    WEIGHT = "weight"  # int8 weights, their fp32 scales, norm vectors
    KV = "kv"  # the KV-cache reservation
    BUFFER = "buffer"  # activation buffers


@dataclass(frozen=True)
class Region:
    name: str
    offset: int  # bytes from the start of SRAM
    nbytes: int  # bytes
    kind: RegionKind

    @property
    def end(self) -> int:
        return self.offset + self.nbytes


class SramArena:
    """Bump allocator over one chip's SRAM."""

    def __init__(self, chip_id: int, capacity_bytes: int, alignment_bytes: int = 64) -> None:
        self.chip_id = chip_id
        self.capacity_bytes = capacity_bytes
        self.alignment_bytes = alignment_bytes
        self.regions: list[Region] = []
        self._top = 0  # bytes; first free address

    @property
    def used_bytes(self) -> int:
        return self._top

    @property
    def free_bytes(self) -> int:
        return self.capacity_bytes - self._top

    def aligned(self, nbytes: int) -> int:
        a = self.alignment_bytes
        return -(-nbytes // a) * a

    def fits(self, nbytes: int) -> bool:
        return self.aligned(self._top) + nbytes <= self.capacity_bytes

    def allocate(self, name: str, nbytes: int, kind: RegionKind) -> Region:
        if nbytes < 0:
            raise ValueError(f"region {name!r}: negative size {nbytes}")
        offset = self.aligned(self._top)
        if offset + nbytes > self.capacity_bytes:
            raise SramOverflowError(
                f"chip {self.chip_id}: {name} needs {nbytes:,} bytes but only "
                f"{max(0, self.capacity_bytes - offset):,} of {self.capacity_bytes:,} bytes of SRAM are free"
            )
        region = Region(name, offset, nbytes, kind)
        self.regions.append(region)
        self._top = offset + nbytes
        return region

    def bytes_by_kind(self) -> dict[RegionKind, int]:
        totals = dict.fromkeys(RegionKind, 0)
        for r in self.regions:
            totals[r.kind] += r.nbytes
        return totals
