"""The reference engine: each member trained alone by the shared training loop, with
torch.optim's optimizers and torch's schedulers, exactly as `hpsearch train` trains it. It
trains any model and any registered optimizer or schedule; the cohort engine trains the models
it can stack faster, member for member the same arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hpsearch.config import StudyConfig
from hpsearch.data import Dataset
from hpsearch.engines.base import EpochOutcome, Member
from hpsearch.training import EpochRunner, check_model, evaluate, resolve_device, start_run


class ReferenceEngine:
    """Members trained one after another, an epoch each per round (see the module
    docstring). The data moves to the device once, for every member."""

    name = "reference"

    def __init__(self, config: StudyConfig, data: Dataset, device: str | torch.device = "cpu"):
        self.config = config
        self.device = resolve_device(device)
        check_model(config, data)
        self.data = data.to(self.device)
        self.folds = [self.data.fold(index) for index in range(self.data.n_folds)]
        self._runners: dict[Member, EpochRunner] = {}

    def __len__(self) -> int:
        return len(self._runners)

    @property
    def members(self) -> list[Member]:
        return list(self._runners)

    def add(self, members: Sequence[Member]) -> None:
        for member in members:
            self._runners[member] = start_run(self.config, self.folds[member.fold],
                                              member.params, member.seed, self.device,
                                              member.generator)

    def run_epoch(self) -> list[EpochOutcome]:
        outcomes = []
        for member, runner in self._runners.items():
            try:
                stats = runner.next_epoch()
            except RuntimeError as exc:
                # A torch error in one configuration (a shape, a NaN check, out of memory)
                # ends that member, not the search.
                outcomes.append(EpochOutcome(member, None, error=f"{type(exc).__name__}: "
                                             f"{' '.join(str(exc).split())}"))
                continue
            if stats is None:
                outcomes.append(EpochOutcome(member, None, runner.result.detail))
                continue
            member.history.append(stats)
            outcomes.append(EpochOutcome(member, stats))
        return outcomes

    def measure(self, members: Sequence[Member]) -> list[tuple[float, float | None]]:
        """Each member's loss and accuracy (None for regression) on the held-out test split,
        as it is now."""
        measured = []
        for member in members:
            runner = self._runners[member]
            loss, accuracy = evaluate(runner.model, runner.data.test, runner.loss_fn,
                                      runner.classify)
            measured.append((loss.item(), None if accuracy is None else accuracy.item()))
        return measured

    def remove(self, members: Sequence[Member]) -> None:
        for member in members:
            self._runners.pop(member, None)
