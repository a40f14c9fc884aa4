"""Overlapping tiles of the prior's size, so that any image size can be restored (:class:`TiledPrior`: the
prior's prediction for a whole image from its tiles).

Tiles start every ``tile - overlap`` pixels, the last one flush with the border;
per-pixel results are averaged over the tiles that cover the pixel.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..diffusion import GaussianDiffusion, MeanVariance

__all__ = ["tile_starts", "tile_overlap_pixels", "Tiler", "TiledPrior"]


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


def tile_overlap_pixels(overlap: Optional[float], tile: int) -> int:
    """The overlap in pixels: ``None`` a quarter tile, below 1 that fraction of the tile, else pixels."""
    if overlap is None:
        return tile // 4
    if 0 < overlap < 1:
        return int(round(overlap * tile))
    if overlap != int(overlap):
        raise ValueError(f"tile_overlap is pixels (a whole number) or a fraction of the tile below 1, got {overlap}")
    return int(overlap)


class TiledPrior:
    """The prior's μ, log Σ and x̃0 of a whole image: one UNet forward when the image is one tile (or
    ``whole_image``), else UNet forwards on tiles of ``tile_size`` (``tile_batch`` at a time) averaged over their
    overlaps. Each group of tiles is cut, run and added into the full-size sums at once, so the memory beyond the
    image's own state is that of one group whatever the image's size. No gradient flows through the UNet."""

    def __init__(self, unet: nn.Module, diffusion: GaussianDiffusion, tile_size: Optional[int],
                 tile_overlap: Optional[float] = None, tile_batch: int = 16, whole_image: bool = False,
                 clip_denoised: bool = True):
        if tile_size and not 0 <= tile_overlap_pixels(tile_overlap, tile_size) < tile_size:
            raise ValueError(f"tile_overlap must be below the tile's {tile_size} pixels, got {tile_overlap}")
        self.unet, self.diffusion = unet, diffusion
        self.tile_size, self.tile_overlap, self.tile_batch = tile_size, tile_overlap, tile_batch
        self.whole_image, self.clip_denoised = whole_image, clip_denoised
        self._tiler: Optional[Tiler] = None

    def __call__(self, x: torch.Tensor, t: torch.Tensor, labels: Optional[torch.Tensor]) -> MeanVariance:
        h, w = x.shape[-2:]
        if self.whole_image or (h == self.tile_size and w == self.tile_size):
            return self.whole(x, t, labels)
        return self.tiled(x, t, labels)

    def whole(self, x: torch.Tensor, t: torch.Tensor, labels: Optional[torch.Tensor]) -> MeanVariance:
        """One UNet forward on the whole image."""
        kwargs = {} if labels is None else {"y": labels}
        with torch.no_grad():
            out = self.unet(x, self.diffusion.model_timesteps(t), **kwargs)
        return self.diffusion.mean_variance_from_output(out, x, t, clip_denoised=self.clip_denoised)

    def tiled(self, x: torch.Tensor, t: torch.Tensor, labels: Optional[torch.Tensor]) -> MeanVariance:
        """UNet forwards on the tiles, averaged over their overlaps."""
        model_t = self.diffusion.model_timesteps(t)
        n, channels = x.shape[0], x.shape[1]
        tiler = self.tiler(*x.shape[-2:])
        total = n * tiler.num_tiles
        sums = {key: x.new_zeros(n, channels, *x.shape[-2:]) for key in ("mean", "log_variance", "pred_xstart")}
        with torch.no_grad():
            for start in range(0, total, self.tile_batch):
                positions = list(range(start, min(total, start + self.tile_batch)))
                images = torch.tensor([p // tiler.num_tiles for p in positions], device=x.device)
                tiles = tiler.tiles_at(x, positions)
                kwargs = {} if labels is None else {"y": labels[images]}
                out = self.unet(tiles, model_t[images], **kwargs)
                mv = self.diffusion.mean_variance_from_output(out, tiles, t[images], clip_denoised=self.clip_denoised)
                for key, value in sums.items():
                    tiler.accumulate(value, getattr(mv, key), positions)
                del out, mv, tiles
        log_variance = tiler.average(sums["log_variance"])
        return MeanVariance(
            mean=tiler.average(sums["mean"]),
            variance=torch.exp(log_variance),
            log_variance=log_variance,
            pred_xstart=tiler.average(sums["pred_xstart"]),
        )

    def tiler(self, h: int, w: int) -> Tiler:
        """The tiling of an ``h × w`` image (cached for the last size)."""
        if self._tiler is None or (self._tiler.height, self._tiler.width) != (h, w):
            tile = self.tile_size
            if h < tile or w < tile:
                raise ValueError(
                    f"the image is {h}x{w}, smaller than the prior's {tile}x{tile} tiles; pad it to at least "
                    f"{tile}x{tile}, or run the UNet on the whole image (whole_image=True)"
                )
            self._tiler = Tiler(h, w, tile, tile_overlap_pixels(self.tile_overlap, tile))
        return self._tiler
