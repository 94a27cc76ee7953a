"""Test stand-in for ``comfy.conds``: a conditioning tensor repeated to the batch and concatenated."""

from __future__ import annotations

import torch


class CONDRegular:
    def __init__(self, cond):
        self.cond = cond

    def process_cond(self, batch_size, **kwargs):
        rows = self.cond.shape[0]
        return CONDRegular(self.cond if rows == batch_size else self.cond.repeat(batch_size // rows, *[1] * (self.cond.ndim - 1)))

    def can_concat(self, other):
        return self.cond.shape == other.cond.shape

    def concat(self, others):
        return torch.cat([self.cond] + [o.cond for o in others])

    def size(self):
        return list(self.cond.size())
