"""Batches of same-size inputs, and their distribution over processes.

A batch's composition depends only on the inputs and the batch size, never on the number of processes: the
processes share out whole batches (:class:`ShardSampler`), so an image is restored with the same batch mates,
hence the same result, however many GPUs run.
"""

from __future__ import annotations

from typing import Dict, Hashable, Iterator, List, Optional, Sequence

import torch.distributed as dist
from torch.utils.data import DistributedSampler

__all__ = ["group_batches", "ProcessSampler", "ShardSampler", "EMPTY_BATCH"]


def group_batches(sizes: Sequence[Hashable], batch_size: int) -> List[List[int]]:
    """Group item indices ``0..len(sizes)-1`` into batches of items of one size key.

    For each distinct size key, in order of its first appearance, its items in order of index are cut into
    consecutive chunks of ``batch_size`` (the last chunk may be shorter); the batches are then ordered by their
    first index. Every index appears in exactly one batch. Example, keys ``A A B A A B`` and ``batch_size=2``:
    ``[[0, 1], [2, 5], [3, 4]]``.

    :param sizes: one hashable size key per item, e.g. ``(H, W)``.
    :param batch_size: the most items a batch holds (>= 1).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    members: Dict[Hashable, List[int]] = {}
    for index, key in enumerate(sizes):
        members.setdefault(key, []).append(index)
    batches = [indices[start : start + batch_size] for indices in members.values()
               for start in range(0, len(indices), batch_size)]
    return sorted(batches, key=lambda batch: batch[0])


class ProcessSampler(DistributedSampler):
    """The base of this package's samplers: a :class:`~torch.utils.data.DistributedSampler` (Lightning keeps a
    sampler that already is one instead of replacing it by its own, which would pad, shuffle and repeat) that
    knows its process without needing an initialised process group.

    :param length: the number of indices in all (over the processes).
    :param num_replicas: the number of processes (default: the world size of ``torch.distributed``, 1 when it
        is not initialised).
    :param rank: this process's rank (default: from ``torch.distributed``, 0 when it is not initialised).
    """

    def __init__(self, length: int, num_replicas: Optional[int] = None, rank: Optional[int] = None):
        # DistributedSampler.__init__ needs an initialised process group; set its attributes here instead
        distributed = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if distributed else 1
        if rank is None:
            rank = dist.get_rank() if distributed else 0
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"invalid rank {rank} of {num_replicas} processes")
        self.dataset = range(length)
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.drop_last = False
        self.shuffle = False
        self.seed = 0


#: the position a :class:`ShardSampler` gives a process that has no batch: the dataset makes an empty batch of it
EMPTY_BATCH = -1


class ShardSampler(ProcessSampler):
    """This process's batch positions: rank r of W gets r, r + W, r + 2W, ... of ``0..num_batches-1``.

    No repetition, no shuffling: across the processes every batch is taken exactly once (some ranks may get one
    batch fewer). With several processes, one that has no batch at all (fewer batches than processes, e.g. a
    resumed run with few inputs left) gets the single position :data:`EMPTY_BATCH` instead: an empty batch keeps
    it in the loop, so that every process reaches the collective calls (metrics, barriers) of the others. It is
    a :class:`~torch.utils.data.DistributedSampler` on purpose: Lightning keeps a sampler that already is one
    instead of replacing it by its own (which would pad and repeat), for predict, validate and test alike.

    :param num_batches: how many batches there are in all (the dataset's length).
    :param num_replicas: the number of processes (default: the world size of ``torch.distributed``, 1 when it
        is not initialised).
    :param rank: this process's rank (default: from ``torch.distributed``, 0 when it is not initialised).
    """

    def __init__(self, num_batches: int, num_replicas: Optional[int] = None, rank: Optional[int] = None):
        if num_batches < 0:
            raise ValueError(f"num_batches must be >= 0, got {num_batches}")
        super().__init__(num_batches, num_replicas, rank)
        self.num_batches = num_batches
        self.positions = list(range(self.rank, num_batches, self.num_replicas))
        if not self.positions and self.num_replicas > 1:
            self.positions = [EMPTY_BATCH]
        self.num_samples = len(self.positions)
        self.total_size = num_batches

    def __iter__(self) -> Iterator[int]:
        return iter(self.positions)

    def __len__(self) -> int:
        return self.num_samples
