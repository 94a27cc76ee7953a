"""Bucket batch sampler: batches of one bucket each, shuffled per epoch from the run seed.

Follows opensora/datasets/sampler.py (``VariableVideoBatchSampler.__iter__``, v1.1/v1.2) minus the
rank split, which ``accelerator.prepare`` does (batch i goes to process i mod N, and the batch list is
padded to a multiple of N). Per epoch, with one torch generator seeded ``seed + epoch``: each bucket
is padded to a multiple of its batch size (or cut, with ``drop_last``) and shuffled, then the list of
bucket accesses is shuffled. Padding repeats the bucket's samples cyclically (the official code pads
once from the start, which leaves buckets smaller than half a batch without any batch).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from typing import Any

import torch

Groups = dict[Hashable, list[Any]]  # bucket -> sample ids, in the order buckets were first met


class BucketBatchSampler:
    """Yields lists of sample ids; call :meth:`set_epoch` before iterating each epoch."""

    def __init__(self, groups_for_epoch: Callable[[int], Groups], batch_size: Callable[[Hashable], int], *,
                 seed: int, shuffle: bool = True, drop_last: bool = False) -> None:
        self.groups_for_epoch = groups_for_epoch
        self.batch_size_of = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        self._cache: tuple[int, list[list[Any]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[Any]]:
        """Every batch of the current epoch, in order (computed once per epoch)."""
        if self._cache is None or self._cache[0] != self.epoch:
            self._cache = (self.epoch, self._make_batches(self.groups_for_epoch(self.epoch)))
        return self._cache[1]

    def _make_batches(self, groups: Groups) -> list[list[Any]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        lists, order = {}, []
        for bucket, ids in groups.items():
            ids = self._fit(list(ids), self.batch_size_of(bucket))
            if self.shuffle:
                ids = [ids[i] for i in torch.randperm(len(ids), generator=generator).tolist()]
            lists[bucket] = ids
            order += [bucket] * (len(ids) // self.batch_size_of(bucket))
        if self.shuffle:
            order = [order[i] for i in torch.randperm(len(order), generator=generator).tolist()]
        batches, used = [], dict.fromkeys(lists, 0)
        for bucket in order:
            size = self.batch_size_of(bucket)
            batches.append(lists[bucket][used[bucket] : used[bucket] + size])
            used[bucket] += size
        return batches

    def _fit(self, ids: list, size: int) -> list:
        remainder = len(ids) % size
        if remainder == 0 or not ids:
            return ids
        if self.drop_last:
            return ids[: len(ids) - remainder]
        return ids + [ids[i % len(ids)] for i in range(size - remainder)]

    def __iter__(self) -> Iterator[list[Any]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())


__all__ = ["BucketBatchSampler", "Groups"]
