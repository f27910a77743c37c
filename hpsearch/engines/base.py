"""The engine interface: what the search driver asks of whatever trains its members.

A member is one training run: one configuration's parameters, one seed (its initial weights
and its batch order) and one fold of the data (its training and validation rows). An engine
trains a changing set of members, epoch by epoch, each member from its own epoch 1: the driver
adds members, runs an epoch of every member, and removes the members it ends (pruned,
diverged, at their last epoch, or given up). A trial is one member or several (its runs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from hpsearch.data import Dataset
from hpsearch.params import Value
from hpsearch.training import EpochStats


@dataclass(eq=False)
class Member:
    """One training run: what it trains with, and how far it got."""

    key: Any  # the caller's handle (the search driver's running trial)
    params: Mapping[str, Value]
    seed: int
    fold: int = 0  # which fold's splits it trains and validates on
    generator: torch.Generator = field(init=False)  # its batch order
    history: list[EpochStats] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed)


@dataclass(frozen=True)
class EpochOutcome:
    """One member's epoch: its stats; or why it diverged (`diverged`) or failed with an error
    (`error`), and then `stats` is None."""

    member: Member
    stats: EpochStats | None
    diverged: str = ""
    error: str = ""


class Engine(Protocol):
    """Trains members epoch by epoch (see the module docstring)."""

    name: str
    device: torch.device
    data: Dataset  # what its members train and validate on (each on its fold's splits)

    def __len__(self) -> int: ...

    @property
    def members(self) -> list[Member]: ...

    def add(self, members: Sequence[Member]) -> None: ...

    def run_epoch(self) -> list[EpochOutcome]:
        """One more epoch of every member."""
        ...

    def measure(self, members: Sequence[Member]) -> list[tuple[float, float | None]]:
        """Each member's loss and accuracy (None for regression) on the test split."""
        ...

    def remove(self, members: Sequence[Member]) -> None: ...
