"""A model factory of your own: fixed options from the study file, one searched parameter, and
a `head` attribute so that `head_lr_mult` knows which layer gets the head's learning rate.

    [model]
    factory = "hpsearch.examples.models:tabular_net"
    depth = 2                               # a fixed option

    [search.params]
    width = { low = 16, high = 128 }        # narrow the factory's own searched parameter
"""

from __future__ import annotations

import torch
from torch import nn

from hpsearch.models import searches
from hpsearch.params import Param

WIDTH = Param("width", "int", "hidden layer width (tabular_net)", default=32,
              low=8, high=128, log=True, bounds=(1, 65_536))


class TabularNet(nn.Module):
    """`depth` hidden layers of `width` units with ReLU (the body), then a linear head."""

    def __init__(self, n_inputs: int, n_outputs: int, width: int, depth: int):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(n_inputs if i == 0 else width, width), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width if depth else n_inputs, n_outputs)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(features))


@searches(WIDTH)
def tabular_net(n_inputs: int, n_outputs: int, width: int = 32, depth: int = 2) -> TabularNet:
    return TabularNet(n_inputs, n_outputs, width, depth)
