"""Reading and writing image files.

Reading gives float32 ``(3, H, W)`` pixels in [0, 1] (gray replicated to three channels), the alpha channel
apart, the file's bit depth and colour layout, with the EXIF orientation applied. PNG, JPEG and whatever
Pillow reads (BMP, TIFF, WebP) are read; 16-bit PNGs keep their 16 bits (Pillow would cut 48/64-bit PNGs to
8 bits, so those are decoded by torchvision). Writing is always PNG, 8 or 16 bits, atomic.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import GDPError
from ..io import atomic_path

__all__ = ["DataError", "ImageFile", "read_image", "write_image", "apply_orientation", "png_bit_depth"]

PathLike = Union[str, os.PathLike]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# the colour layout of a file -> PNG colour type
_PNG_COLOUR_TYPES = {"L": 0, "RGB": 2, "LA": 4, "RGBA": 6}
_MODES_BY_CHANNELS = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
_ORIENTATION_TAG = 0x0112


class DataError(GDPError, ValueError):
    """An input file or a data option is unusable; the message (one line) names it and says what to do.

    A :class:`~gdp_lightning.errors.GDPError`, so the command line prints its message alone."""


@dataclass
class ImageFile:
    """One decoded image file.

    :ivar pixels: ``(3, H, W)`` float32 in [0, 1]; gray images are replicated to three channels.
    :ivar alpha: ``(1, H, W)`` float32 in [0, 1], or ``None`` when the file has no alpha channel.
    :ivar bits: 8 or 16, the file's bits per sample.
    :ivar mode: the file's colour layout: ``"L"``, ``"LA"``, ``"RGB"`` or ``"RGBA"`` (palettes count as RGB(A)).
    :ivar path: where it was read from.
    """

    pixels: Tensor
    alpha: Optional[Tensor]
    bits: int
    mode: str
    path: Path

    @property
    def size(self) -> Tuple[int, int]:
        """``(H, W)``."""
        return int(self.pixels.shape[-2]), int(self.pixels.shape[-1])


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text


def cannot_read(path: PathLike, error: BaseException) -> DataError:
    """The one-line error of an unreadable image file."""
    return DataError(
        f"{path}: cannot read the image ({_one_line(error)}); replace it with a complete PNG, JPEG, BMP, TIFF or "
        "WebP file or leave it out of the inputs"
    )


_truncation_lock = threading.Lock()
_truncation_depth = 0
_truncation_previous = False


@contextlib.contextmanager
def truncated_files_fail() -> Iterator[None]:
    """Within the block, Pillow raises on truncated files (whatever ``ImageFile.LOAD_TRUNCATED_IMAGES`` is set to
    elsewhere); the previous setting is restored when the last of the (possibly concurrent) blocks exits."""
    global _truncation_depth, _truncation_previous
    from PIL import ImageFile as PILImageFile

    with _truncation_lock:
        if _truncation_depth == 0:
            _truncation_previous = PILImageFile.LOAD_TRUNCATED_IMAGES
            PILImageFile.LOAD_TRUNCATED_IMAGES = False
        _truncation_depth += 1
    try:
        yield
    finally:
        with _truncation_lock:
            _truncation_depth -= 1
            if _truncation_depth == 0:
                PILImageFile.LOAD_TRUNCATED_IMAGES = _truncation_previous


def png_bit_depth(path: PathLike) -> Optional[int]:
    """The bit depth of a PNG file read from its IHDR chunk, or ``None`` if the file is not a PNG."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    return head[24]


def exif_orientation(image) -> int:
    """The EXIF orientation (1..8) of an opened, not necessarily loaded, Pillow image, from its header only.

    For PNG only an ``eXIf`` chunk before the image data counts (Pillow would otherwise decode the whole file to
    look further; libpng, which decodes 16-bit PNGs here, does not look further either).
    """
    from PIL import Image

    try:
        if image.format == "PNG":
            raw = image.info.get("exif")
            if not raw:
                return 1
            exif = Image.Exif()
            exif.load(raw)
        else:
            exif = image.getexif()
        orientation = int(exif.get(_ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block leaves the image as stored
        return 1
    return orientation if 1 <= orientation <= 8 else 1


def oriented_size(width: int, height: int, orientation: int) -> Tuple[int, int]:
    """``(H, W)`` of a stored ``width × height`` image once its EXIF ``orientation`` is applied."""
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def apply_orientation(image: Tensor, orientation: int) -> Tensor:
    """Apply an EXIF orientation (1..8) to a ``(..., H, W)`` tensor, as Pillow's ``ImageOps.exif_transpose``."""
    if orientation == 2:  # mirrored left-right
        return image.flip(-1)
    if orientation == 3:  # rotated 180°
        return image.flip(-1).flip(-2)
    if orientation == 4:  # mirrored top-bottom
        return image.flip(-2)
    if orientation == 5:  # transposed
        return image.transpose(-1, -2)
    if orientation == 6:  # stored rotated 90° counter-clockwise: turn clockwise
        return torch.rot90(image, -1, dims=(-2, -1))
    if orientation == 7:  # transversed
        return torch.rot90(image.transpose(-1, -2), 2, dims=(-2, -1))
    if orientation == 8:  # stored rotated 90° clockwise: turn counter-clockwise
        return torch.rot90(image, 1, dims=(-2, -1))
    return image


def _split_channels(samples: Tensor, mode: str, bits: int, path: Path) -> ImageFile:
    """``(C, H, W)`` integer samples of a file of layout ``mode`` -> :class:`ImageFile`."""
    scale = float(2**bits - 1)
    values = samples.to(torch.float64).div_(scale).to(torch.float32)
    colour_channels = 1 if mode in ("L", "LA") else 3
    pixels = values[:colour_channels]
    if colour_channels == 1:
        pixels = pixels.expand(3, -1, -1)
    alpha = values[colour_channels : colour_channels + 1] if mode in ("LA", "RGBA") else None
    return ImageFile(pixels.contiguous(), None if alpha is None else alpha.contiguous(), bits, mode, path)


def _read_16bit_png(path: Path, orientation: int) -> ImageFile:
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders (for TorchCodec), they still work
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_image

        samples = decode_image(str(path), mode=ImageReadMode.UNCHANGED)
    if samples.dtype != torch.uint16:  # pragma: no cover - libpng gives uint16 for every 16-bit PNG
        raise ValueError(f"expected 16-bit samples, got {samples.dtype}")
    mode = _MODES_BY_CHANNELS.get(samples.shape[0])
    if mode is None:  # pragma: no cover
        raise ValueError(f"unexpected channel count {samples.shape[0]}")
    samples = apply_orientation(samples.to(torch.int32), orientation)
    return _split_channels(samples, mode, 16, path)


def _read_with_pillow(path: Path) -> ImageFile:
    from PIL import Image

    with Image.open(path) as image:
        orientation = exif_orientation(image)
        image.load()
        mode, bits = image.mode, 8
        has_transparency = "transparency" in image.info
        if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):  # 16-bit gray (TIFF, PNG), 32-bit integer gray
            samples = np.array(image, dtype=np.int64)
            samples = np.clip(samples, 0, 65535)[None]
            mode, bits = "L", 16
        else:
            if mode == "P" or mode == "PA":
                target = "RGBA" if (mode == "PA" or has_transparency) else "RGB"
            elif mode in ("1", "L"):
                target = "LA" if has_transparency else "L"
            elif mode in ("LA", "La"):
                target = "LA"
            elif mode in ("RGBA", "RGBa"):
                target = "RGBA"
            elif mode == "RGB":
                target = "RGBA" if has_transparency else "RGB"
            else:  # CMYK, YCbCr, LAB, HSV, F, ...
                target = "RGB"
            if image.mode != target:
                image = image.convert(target)
            samples = np.array(image, dtype=np.uint8)  # a writable copy
            samples = samples[None] if samples.ndim == 2 else samples.transpose(2, 0, 1)
            mode = target
    tensor = apply_orientation(torch.from_numpy(np.ascontiguousarray(samples)), orientation)
    return _split_channels(tensor, mode, bits, path)


def read_image(path: PathLike) -> ImageFile:
    """Decode an image file: PNG (8/16-bit, gray, gray+alpha, RGB, RGBA, palette), JPEG, BMP, TIFF, WebP.

    The EXIF orientation is applied. A missing, truncated, corrupt or non-image file raises :class:`DataError`.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such image file")
    try:
        with truncated_files_fail():
            if png_bit_depth(path) == 16:
                from PIL import Image

                with Image.open(path) as image:
                    orientation = exif_orientation(image)
                return _read_16bit_png(path, orientation)
            return _read_with_pillow(path)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder error becomes one clear message
        raise cannot_read(path, e) from None


# ---------------------------------------------------------------------------------------------------- writing
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _filtered_rows(raw: np.ndarray, bytes_per_pixel: int) -> np.ndarray:
    """PNG-filter the ``(H, row_bytes)`` uint8 scanlines, choosing per row the filter (None, Sub, Up, Paeth)
    with the smallest sum of absolute signed residuals; returns ``(H, 1 + row_bytes)`` with the filter bytes."""
    bpp = bytes_per_pixel
    data = raw.astype(np.int16)
    left = np.zeros_like(data)
    left[:, bpp:] = data[:, :-bpp]
    up = np.zeros_like(data)
    up[1:] = data[:-1]
    up_left = np.zeros_like(data)
    up_left[1:, bpp:] = data[:-1, :-bpp]
    estimate = left + up - up_left
    dist_left, dist_up, dist_up_left = np.abs(estimate - left), np.abs(estimate - up), np.abs(estimate - up_left)
    paeth = np.where((dist_left <= dist_up) & (dist_left <= dist_up_left), left,
                     np.where(dist_up <= dist_up_left, up, up_left))
    candidates = np.stack([data, data - left, data - up, data - paeth]).astype(np.uint8)  # filter types 0, 1, 2, 4
    cost = np.abs(candidates.view(np.int8).astype(np.int32)).sum(-1)  # (4, H)
    choice = cost.argmin(0)
    rows = candidates[choice, np.arange(data.shape[0])]
    filter_types = np.array([0, 1, 2, 4], dtype=np.uint8)[choice]
    return np.concatenate([filter_types[:, None], rows], axis=1)


def encode_png_16bit(samples: np.ndarray) -> bytes:
    """A 16-bit PNG of ``(H, W, C)`` uint16 samples, C = 1 (gray), 2 (gray+alpha), 3 (RGB) or 4 (RGBA)."""
    if samples.ndim != 3 or samples.shape[-1] not in _MODES_BY_CHANNELS:
        raise ValueError(f"expected (H, W, 1..4) samples, got shape {samples.shape}")
    height, width, channels = samples.shape
    colour_type = _PNG_COLOUR_TYPES[_MODES_BY_CHANNELS[channels]]
    raw = np.ascontiguousarray(samples.astype(">u2")).view(np.uint8).reshape(height, width * channels * 2)
    scanlines = _filtered_rows(raw, channels * 2)
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return (PNG_SIGNATURE + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 6))
            + _png_chunk(b"IEND", b""))


def _as_chw(pixels: Tensor, what: str) -> Tensor:
    pixels = torch.as_tensor(pixels).detach()
    if pixels.ndim == 4 and pixels.shape[0] == 1:
        pixels = pixels[0]
    if pixels.ndim == 2:
        pixels = pixels[None]
    if pixels.ndim != 3:
        raise ValueError(f"{what} must be (C, H, W), got shape {tuple(pixels.shape)}")
    return pixels.cpu().to(torch.float32)


def write_image(
    path: PathLike, pixels: Tensor, *, bits: int = 8, alpha: Optional[Tensor] = None, gray: bool = False
) -> None:
    """Write ``pixels`` as a PNG file, atomically (a reader never sees a half-written file).

    :param path: the ``.png`` file to write (folders are created).
    :param pixels: ``(3, H, W)`` or ``(1, H, W)`` in [0, 1] (clamped; a leading batch dimension of 1 is
        accepted). One channel is written as gray when ``gray``, else replicated to RGB.
    :param bits: 8 (values ``round(x·255)``) or 16 (``round(x·65535)``, a genuine 16-bit PNG).
    :param alpha: ``(1, h, w)`` in [0, 1] appended as the alpha channel; resized bilinearly to ``H × W`` when its
        size differs (e.g. a super-resolved output of an input with alpha).
    :param gray: write one channel: the mean of the three channels (or the single channel given).
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise DataError(f"{path}: images are written as PNG; give a name ending in .png")
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    pixels = _as_chw(pixels, "pixels")
    if pixels.shape[0] not in (1, 3):
        raise ValueError(f"pixels must have 1 or 3 channels, got {pixels.shape[0]}")
    if gray:
        pixels = pixels.mean(0, keepdim=True) if pixels.shape[0] == 3 else pixels
    elif pixels.shape[0] == 1:
        pixels = pixels.expand(3, -1, -1)
    height, width = pixels.shape[-2:]
    if alpha is not None:
        alpha = _as_chw(alpha, "alpha")
        if alpha.shape[0] != 1:
            raise ValueError(f"alpha must be (1, H, W), got shape {tuple(alpha.shape)}")
        if tuple(alpha.shape[-2:]) != (height, width):
            shrink = alpha.shape[-2] > height or alpha.shape[-1] > width
            alpha = F.interpolate(alpha[None], size=(height, width), mode="bilinear", align_corners=False,
                                  antialias=shrink)[0]
        pixels = torch.cat([pixels, alpha])
    levels = float(2**bits - 1)
    samples = (pixels.to(torch.float64).clamp(0, 1) * levels).round().permute(1, 2, 0).numpy()
    with atomic_path(path) as tmp:
        if bits == 16:
            tmp.write_bytes(encode_png_16bit(samples.astype(np.uint16)))
        else:
            from PIL import Image

            samples = samples.astype(np.uint8)  # Pillow infers L, LA, RGB or RGBA from the channel count
            Image.fromarray(samples[..., 0] if samples.shape[-1] == 1 else samples).save(tmp, format="PNG")
