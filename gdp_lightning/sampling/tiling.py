"""Overlapping tiles of the prior's size, so that any image size can be restored.

Tiles start every ``tile - overlap`` pixels, the last one flush with the border;
per-pixel results are averaged over the tiles that cover the pixel.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch

__all__ = ["tile_starts", "Tiler"]


def tile_starts(length: int, tile: int, overlap: int) -> List[int]:
    """Start offsets of tiles of ``tile`` pixels covering ``length`` pixels, the last flush with the end."""
    if tile > length:
        raise ValueError(f"a tile of {tile} pixels does not fit in {length}")
    if not 0 <= overlap < tile:
        raise ValueError(f"the overlap must be in [0, {tile}), got {overlap}")
    stride = tile - overlap
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


class Tiler:
    """Split ``(N, C, H, W)`` tensors into ``(N·T, C, tile, tile)`` tiles and merge them back by averaging."""

    def __init__(self, height: int, width: int, tile: int, overlap: int):
        self.height, self.width, self.tile = height, width, tile
        self.boxes: List[Tuple[int, int]] = [
            (top, left) for top in tile_starts(height, tile, overlap) for left in tile_starts(width, tile, overlap)
        ]
        count = torch.zeros(1, 1, height, width)
        for top, left in self.boxes:
            count[..., top : top + tile, left : left + tile] += 1
        self._count = count

    @property
    def num_tiles(self) -> int:
        return len(self.boxes)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """Tiles ordered image-major: tile ``j`` of image ``i`` is at ``i·T + j``."""
        return self.tiles_at(x, range(x.shape[0] * self.num_tiles))

    def tiles_at(self, x: torch.Tensor, positions: Sequence[int]) -> torch.Tensor:
        """The tiles at flat positions ``i·T + j`` (image i, tile j) of :meth:`split`, without making the others."""
        t, count = self.tile, self.num_tiles
        return torch.stack([x[p // count, ..., top : top + t, left : left + t]
                            for p in positions for top, left in [self.boxes[p % count]]])

    def accumulate(self, out: torch.Tensor, tiles: torch.Tensor, positions: Sequence[int]) -> None:
        """Add ``tiles`` (at flat positions ``positions``) into the full-size sums ``out``; :meth:`average`
        turns the sums of all tiles into the merged image, equal to :meth:`merge` of all of them."""
        t, count = self.tile, self.num_tiles
        for k, p in enumerate(positions):
            top, left = self.boxes[p % count]
            out[p // count, :, top : top + t, left : left + t] += tiles[k]

    def average(self, sums: torch.Tensor) -> torch.Tensor:
        """The sums of :meth:`accumulate` divided by the number of tiles over each pixel."""
        if self.num_tiles == 1:
            return sums
        return sums / self._count.to(sums.device, sums.dtype)

    def merge(self, tiles: torch.Tensor) -> torch.Tensor:
        """Average of the tiles (all of :meth:`split`'s) over their overlaps."""
        sums = tiles.new_zeros(tiles.shape[0] // self.num_tiles, tiles.shape[1], self.height, self.width)
        self.accumulate(sums, tiles, range(tiles.shape[0]))
        return self.average(sums)
