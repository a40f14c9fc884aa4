"""Reading the arrays of side files (masks, kernels): ``.npy``, ``.pt``, text or an image."""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import torch

from ..errors import InputError

__all__ = ["read_array"]


def read_array(
    path: Union[str, Path],
    what: str,
    noun: str,
    *,
    dtype: torch.dtype,
    image_mode: str,
    image_scale: float = 1.0,
    text: bool = False,
) -> torch.Tensor:
    """The array in ``path``, squeezed: ``.npy`` (no pickles), ``.pt`` (a tensor, ``weights_only``), ``.txt`` /
    ``.csv`` when ``text`` (whitespace or comma separated), else an image converted to PIL mode ``image_mode``
    and multiplied by ``image_scale``.

    :param what: the file's role with its article (``"a blur kernel"``), for the one-line errors.
    :param noun: what a missing file is called (``"kernel"``: "no such kernel file").
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such {noun} file")
    suffix = path.suffix.lower()
    np_dtype = torch.empty((), dtype=dtype).numpy().dtype
    try:
        if suffix == ".npy":
            array = torch.from_numpy(np.load(path, allow_pickle=False).astype(np_dtype))
        elif suffix == ".pt":
            array = torch.load(path, map_location="cpu", weights_only=True).to(dtype)
        elif text and suffix in (".txt", ".csv"):
            array = torch.from_numpy(np.loadtxt(path, delimiter="," if suffix == ".csv" else None, ndmin=2)).to(dtype)
        else:
            from PIL import Image

            with Image.open(path) as im:
                array = torch.from_numpy(np.asarray(im.convert(image_mode), dtype=np_dtype))
            if image_scale != 1.0:
                array = array * image_scale
    except Exception as e:  # noqa: BLE001 - any reader error becomes one clear message
        raise InputError(f"{path}: cannot read {what} ({e})") from None
    return array.squeeze()
