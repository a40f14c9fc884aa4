"""Class labels for class-conditional priors: one class for every image, a ``name label`` file, or a seeded random
class per image (image i's from (seed, i) only)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from ..errors import ConfigError, InputError
from ..seeds import LABEL, generator

__all__ = ["ClassLabels", "read_labels"]


class ClassLabels:
    """Which class each image is restored or sampled as (``--model.class_label``, ``--model.labels_file``,
    ``--model.random_labels``); nothing for an unconditional prior (``num_classes`` ``None``)."""

    def __init__(self, num_classes: Optional[int], class_label: Optional[int] = None,
                 labels_file: Optional[str] = None, random_labels: bool = False):
        self.num_classes, self.class_label = num_classes, class_label
        self.labels_file, self.random_labels = labels_file, random_labels
        self._table: Optional[Dict[str, int]] = None
        given = [n for n, v in (("class_label", class_label), ("labels_file", labels_file),
                                ("random_labels", random_labels or None)) if v is not None]
        if num_classes is None and given:
            raise ConfigError(f"--model.{given[0]} is set but the prior is unconditional; remove it")
        if len(given) > 1:
            raise ConfigError(f"give one of --model.class_label, --model.labels_file, --model.random_labels, not {given}")
        if class_label is not None and not 0 <= class_label < num_classes:
            raise ConfigError(f"--model.class_label must be in 0..{num_classes - 1}, got {class_label}")

    def load(self) -> None:
        """Read the labels file (if any)."""
        if self.labels_file is not None:
            self._table = read_labels(self.labels_file)

    def require(self, names: Sequence[str]) -> None:
        """Every name has a line in the labels file (when one is used)."""
        if self._table is None:
            return
        missing = [n for n in names if n not in self._table]
        if missing:
            raise InputError(f"--model.labels_file {self.labels_file}: no label for {missing[0]!r}; add a line "
                             f"'{missing[0]} <class>'")

    def for_images(self, names: Sequence[str], seeds: Sequence[int],
                   device: Optional[torch.device] = None) -> Optional[torch.Tensor]:
        """The class of each image to restore (``None`` for an unconditional prior)."""
        if self.num_classes is None:
            return None
        if self.class_label is not None:
            labels = [self.class_label] * len(names)
        elif self._table is not None:
            self.require(names)
            labels = [self._table[n] for n in names]
        elif self.random_labels:
            labels = self.random(seeds)
        else:
            raise ConfigError(
                "the prior is class-conditional: give --model.class_label N, --model.labels_file FILE or "
                "--model.random_labels true"
            )
        return torch.tensor(labels, dtype=torch.long, device=device)

    def for_samples(self, seeds: Sequence[int], device: Optional[torch.device] = None) -> Optional[torch.Tensor]:
        """The class of each unconditional sample: the one class, else a random class per sample."""
        if self.num_classes is None:
            return None
        labels = [self.class_label] * len(seeds) if self.class_label is not None else self.random(seeds)
        return torch.tensor(labels, dtype=torch.long, device=device)

    def random(self, seeds: Sequence[int]) -> List[int]:
        """A class per sampler seed: image i's comes from (seed, i) only."""
        return [int(torch.randint(self.num_classes, (1,), generator=generator(s + LABEL))) for s in seeds]


def read_labels(path: str) -> Dict[str, int]:
    """``name label`` (or ``name,label``) per line; ``#`` comments and blank lines ignored."""
    labels: Dict[str, int] = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise InputError(f"--model.labels_file {path}: cannot read it ({e.strerror or e})") from None
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.replace(",", " ").split()
        try:
            name, label = parts[0], int(parts[1])
        except (IndexError, ValueError):
            raise InputError(f"--model.labels_file {path}:{number}: write 'name label', got {line!r}") from None
        labels[Path(name).with_suffix("").as_posix() if Path(name).suffix else name] = label
    return labels
