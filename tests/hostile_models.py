"""TorchScript files whose scripted ``__setstate__`` does something at load time (tests only)."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn


class _WritesMarker(nn.Module):
    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker

    def forward(self, x):
        return x

    @torch.jit.export
    def __getstate__(self) -> Tuple[str, bool]:
        return (self.marker, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, bool]):
        self.marker = state[0]
        t = torch.from_file(state[0], shared=True, size=4, dtype=torch.uint8)  # creates the file
        self.training = state[1] and t.numel() > 100


class _LoopsForever(nn.Module):
    def __init__(self):
        super().__init__()
        self.count = 0

    def forward(self, x):
        return x

    @torch.jit.export
    def __getstate__(self) -> Tuple[int, bool]:
        return (self.count, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[int, bool]):
        i = state[0]
        while i >= 0:
            i = i + 1
        self.count = i
        self.training = state[1]


class _Carrier(nn.Module):
    def __init__(self, probe: nn.Module):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 10)
        self.probe = probe

    def forward(self, x):
        return self.fc(self.probe(torch.relu(self.stem(x))).mean((2, 3)))


def marker_script(path, marker) -> None:
    """A TorchScript file that creates ``marker`` when loaded."""
    torch.jit.script(_Carrier(_WritesMarker(str(marker)))).save(str(path))


def looping_script(path) -> None:
    """A TorchScript file whose loading never ends."""
    torch.jit.script(_Carrier(_LoopsForever())).save(str(path))
