"""What the inputs are: image files found in a folder (or listed), their side files, HDR scene folders.

Naming rules (documented for users):

* inputs are the files with an image extension (:data:`IMAGE_EXTENSIONS`, any letter case) directly in the input
  folder (``recursive``: in its sub-folders too); names starting with ``.`` are skipped (hidden, temporary);
* an input's ``name`` is its path relative to the folder, without the extension, with ``/`` separators
  (``"sub/photo"``); outputs are named after it, so two inputs of one name (``a.png``, ``a.jpg``) are an error;
* inputs are sorted by name (plain string order of the path parts), and ``index`` is the position in that order
  (or in the order of the list file, when one selects them);
* side files sit beside their image: ``<stem>_mask.png`` / ``<stem>_mask.npy`` is the inpainting mask of
  ``<stem>.<ext>`` (white / non-zero = observed) and ``<stem>_kernel.png|npy|txt`` its blur kernel. A file whose
  stem ends with ``_mask`` or ``_kernel`` is never an input;
* HDR (``exposure_folders``): every immediate sub-folder is one scene, its images sorted by file name are the
  scene's exposures (at least two, all of one size), the scene's name is the sub-folder's name; files directly
  in the input folder are then ignored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

from ..errors import warn
from .images import DataError, cannot_read, exif_orientation, oriented_size, truncated_files_fail

__all__ = [
    "IMAGE_EXTENSIONS",
    "MASK_EXTENSIONS",
    "KERNEL_EXTENSIONS",
    "InputItem",
    "find_inputs",
    "image_size",
    "check_image",
    "read_list_file",
]

PathLike = Union[str, os.PathLike]

IMAGE_EXTENSIONS: Tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: image formats met in photo folders that are not inputs (animated or camera formats): left out with a warning
UNSUPPORTED_IMAGES: Tuple[str, ...] = (".gif", ".heic", ".heif", ".avif", ".jxl", ".dng", ".cr2", ".nef", ".arw",
                                       ".raw", ".exr", ".hdr", ".svg", ".ico")
MASK_EXTENSIONS: Tuple[str, ...] = (".png", ".npy")
KERNEL_EXTENSIONS: Tuple[str, ...] = (".png", ".npy", ".txt")
_SIDE_FILE_EXTENSIONS = {"mask": MASK_EXTENSIONS, "kernel": KERNEL_EXTENSIONS}


@dataclass
class InputItem:
    """One input: an image (or the exposures of an HDR scene) and its side files.

    :ivar name: the name outputs are written under (``"sub/photo"``, or the scene folder's name).
    :ivar index: the position in the sorted (or listed) inputs, 0..N-1; seeds the synthetic degradation.
    :ivar paths: the image, or the exposures of an HDR scene in order.
    :ivar mask: the ``<stem>_mask`` side file, if any.
    :ivar kernel: the ``<stem>_kernel`` side file, if any.
    """

    name: str
    index: int
    paths: List[Path]
    mask: Optional[Path] = None
    kernel: Optional[Path] = None


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _side_kind(path: Path) -> Optional[str]:
    """``"mask"`` or ``"kernel"`` for a side file (its stem ends with ``_mask`` / ``_kernel``), else ``None``."""
    stem = path.stem.lower()
    for kind in _SIDE_FILE_EXTENSIONS:
        if stem.endswith("_" + kind):
            return kind
    return None


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _sort_key(name: str) -> Tuple[str, ...]:
    return tuple(name.split("/"))


def image_size(path: PathLike) -> Tuple[int, int]:
    """``(H, W)`` of an image once its EXIF orientation is applied, read from the header only."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such image file")
    try:
        with Image.open(path) as image:
            return oriented_size(*image.size, exif_orientation(image))
    except Exception as e:  # noqa: BLE001
        raise cannot_read(path, e) from None


def check_image(path: PathLike) -> None:
    """Decode the whole file and raise :class:`DataError` if it is missing, truncated or corrupt."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such image file")
    try:
        with truncated_files_fail(), Image.open(path) as image:
            image.load()
    except Exception as e:  # noqa: BLE001
        raise cannot_read(path, e) from None


def read_list_file(path: PathLike) -> List[str]:
    """The names of a list file: one a line, ``\\`` read as ``/``; blank lines and ``#`` comment lines ignored."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--data.list_file {path}: no such file")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"--data.list_file {path}: cannot read it ({e}); give a UTF-8 text file") from None
    names = []
    for line in lines:
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        entry = entry.replace("\\", "/")
        while entry.startswith("./"):
            entry = entry[2:]
        names.append(entry)
    if not names:
        raise DataError(f"--data.list_file {path}: lists no names; give one input name a line")
    return names


def _select_listed(items: List[InputItem], list_file: PathLike, where: str) -> List[InputItem]:
    """The items named in ``list_file``, in its order; a name may carry the file's extension."""
    by_name = {item.name: item for item in items}
    by_relative_file: Dict[str, InputItem] = {}
    for item in items:
        if len(item.paths) == 1:
            by_relative_file[(item.name + item.paths[0].suffix).lower()] = item
    selected, missing, seen = [], [], {}
    for entry in read_list_file(list_file):
        item = by_name.get(entry) or by_relative_file.get(entry.lower())
        if item is None:
            missing.append(entry)
            continue
        if item.name in seen:
            raise DataError(f"--data.list_file {list_file}: {item.name!r} is listed twice ({seen[item.name]!r} and "
                            f"{entry!r}); list each input once")
        seen[item.name] = entry
        selected.append(item)
    if missing:
        shown = ", ".join(repr(m) for m in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataError(f"--data.list_file {list_file}: {len(missing)} name(s) not among the inputs of {where}: "
                        f"{shown}; list names of existing inputs, with or without the extension")
    return selected


def _side_files(image: Path, listing: Dict[str, List[Path]]) -> Dict[str, Optional[Path]]:
    """The mask and kernel of ``image`` among ``listing`` (side files of its folder by lower-case stem)."""
    found: Dict[str, Optional[Path]] = {}
    for kind, extensions in _SIDE_FILE_EXTENSIONS.items():
        candidates = listing.get(f"{image.stem}_{kind}".lower(), [])
        candidates = [c for c in candidates if c.stem == f"{image.stem}_{kind}"] or candidates
        if len(candidates) > 1:
            names = " and ".join(str(c) for c in candidates)
            raise DataError(f"{names}: two {kind} files for {image}; keep one")
        if candidates and candidates[0].suffix.lower() not in extensions:
            raise DataError(f"{candidates[0]}: a {kind} side file must be {', '.join(extensions)}; convert it "
                            f"(e.g. {image.stem}_{kind}{extensions[0]})")
        found[kind] = candidates[0] if candidates else None
    return found


def _folder_side_files(files: Iterable[Path]) -> Dict[str, List[Path]]:
    listing: Dict[str, List[Path]] = {}
    for f in files:
        if _side_kind(f) is not None:
            listing.setdefault(f.stem.lower(), []).append(f)
    return listing


def _no_images(where: str) -> DataError:
    return DataError(f"{where}: no images found; the inputs are files ending in {', '.join(IMAGE_EXTENSIONS)} "
                     "(any letter case)")


def _check_unique(named: List[Tuple[str, Path]]) -> None:
    first: Dict[str, Path] = {}
    for name, path in named:
        if name in first:
            raise DataError(f"{first[name]} and {path} have the same name {name!r} (outputs are named after the "
                            "inputs); rename or remove one")
        first[name] = path


def _walk_images(folder: Path, recursive: bool) -> List[Tuple[Path, List[Path]]]:
    """``(directory, files)`` pairs of the folder (and its non-hidden sub-folders when ``recursive``)."""
    out = []
    if recursive:
        for directory, subdirs, filenames in os.walk(folder):
            subdirs[:] = sorted(d for d in subdirs if not _hidden(d))
            d = Path(directory)
            out.append((d, [d / f for f in sorted(filenames) if not _hidden(f) and (d / f).is_file()]))
    else:
        out.append((folder, sorted(p for p in folder.iterdir() if not _hidden(p.name) and p.is_file())))
    return out


def _scene_items(folder: Path) -> List[InputItem]:
    scenes = sorted((p for p in folder.iterdir() if p.is_dir() and not _hidden(p.name)), key=lambda p: p.name)
    if not scenes:
        raise DataError(f"--data.input_dir {folder}: no scene folders found; with --data.exposure_folders every "
                        "sub-folder holds the exposures of one scene")
    items = []
    for scene in scenes:
        exposures = sorted(
            (p for p in scene.iterdir()
             if p.is_file() and not _hidden(p.name) and _is_image(p) and _side_kind(p) is None),
            key=lambda p: p.name,
        )
        if len(exposures) < 2:
            raise DataError(f"{scene}: an HDR scene folder needs at least 2 exposures, found {len(exposures)} "
                            f"(image files ending in {', '.join(IMAGE_EXTENSIONS)})")
        sizes = [image_size(p) for p in exposures]
        for path, size in zip(exposures[1:], sizes[1:]):
            if size != sizes[0]:
                raise DataError(f"{scene}: the exposures differ in size ({exposures[0].name} is "
                                f"{sizes[0][0]}x{sizes[0][1]}, {path.name} is {size[0]}x{size[1]}); give exposures "
                                "of one size")
        items.append(InputItem(scene.name, 0, exposures))
    return items


def find_inputs(
    input_dir: Optional[PathLike] = None,
    files: Optional[Sequence[PathLike]] = None,
    *,
    recursive: bool = False,
    exposure_folders: bool = False,
    list_file: Optional[PathLike] = None,
    side_files: bool = True,
    option: str = "--data.input_dir",
) -> List[InputItem]:
    """The inputs of a folder or of a list of files, sorted by name (see the module's naming rules).

    :param input_dir: the folder of inputs (or, with ``exposure_folders``, of scene folders).
    :param files: explicit image files instead of a folder; named by their stem, side files looked up beside them.
    :param recursive: also take the images of the sub-folders (names keep the relative sub-path).
    :param exposure_folders: HDR: every immediate sub-folder is a scene whose images are its exposures.
    :param list_file: a text file naming (and ordering) the inputs to take, one a line.
    :param side_files: attach ``_mask`` / ``_kernel`` side files (synthetic mode: ``False``).
    :param option: the option that gave ``input_dir``, as errors name it.
    :raises DataError: a missing folder or file, no images, two inputs of one name, bad scene folders, names of the
        list file that are not inputs.
    """
    if (input_dir is None) == (files is None):
        raise DataError("give the inputs either as a folder (--data.input_dir) or as files (--data.files), not "
                        + ("both" if input_dir is not None else "neither"))
    if exposure_folders and (files is not None or recursive):
        raise DataError("--data.exposure_folders takes the scene folders' parent as --data.input_dir, without "
                        "--data.files or --data.recursive")
    items: List[InputItem]
    if files is not None:
        where = "--data.files"
        named = []
        for f in files:
            path = Path(f)
            if not path.is_file():
                raise DataError(f"--data.files {path}: no such file")
            if _side_kind(path) is not None:
                raise DataError(f"--data.files {path}: a file whose name ends with _mask or _kernel is a side file, "
                                "not an input; give its image instead")
            named.append((path.stem, path))
        if not named:
            raise DataError("--data.files: the list is empty; give at least one image file")
        _check_unique(named)
        items = []
        listings: Dict[Path, Dict[str, List[Path]]] = {}
        for name, path in sorted(named, key=lambda np_: _sort_key(np_[0])):
            item = InputItem(name, 0, [path])
            if side_files:
                folder = path.parent
                if folder not in listings:
                    listings[folder] = _folder_side_files(p for p in folder.iterdir() if p.is_file())
                sides = _side_files(path, listings[folder])
                item.mask, item.kernel = sides["mask"], sides["kernel"]
            items.append(item)
    else:
        folder = Path(input_dir)
        where = f"{option} {folder}"
        if not folder.is_dir():
            raise DataError(f"{where}: no such folder")
        if exposure_folders:
            items = _scene_items(folder)
        else:
            named_items = []
            unsupported: List[Path] = []
            for directory, dir_files in _walk_images(folder, recursive):
                listing = _folder_side_files(dir_files) if side_files else {}
                for path in dir_files:
                    if path.suffix.lower() in UNSUPPORTED_IMAGES:
                        unsupported.append(path)
                    if not _is_image(path) or _side_kind(path) is not None:
                        continue
                    name = path.relative_to(folder).with_suffix("").as_posix()
                    item = InputItem(name, 0, [path])
                    if side_files:
                        sides = _side_files(path, listing)
                        item.mask, item.kernel = sides["mask"], sides["kernel"]
                    named_items.append(item)
            if unsupported:
                shown = ", ".join(p.name for p in unsupported[:3]) + (" ..." if len(unsupported) > 3 else "")
                warn(f"{folder}: {len(unsupported)} image file(s) of a format the inputs do not take are left out "
                     f"({shown}); convert them to PNG to restore them")
            if not named_items:
                raise _no_images(where)
            _check_unique([(item.name, item.paths[0]) for item in named_items])
            items = sorted(named_items, key=lambda item: _sort_key(item.name))
    if list_file is not None:
        items = _select_listed(items, list_file, where)
    for index, item in enumerate(items):
        item.index = index
    return items
