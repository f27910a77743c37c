"""hpsearch: joint optimizer x learning-rate-schedule search for PyTorch training, on Optuna.

The names below are importable from `hpsearch` itself; they are loaded on first use, so that
`import hpsearch` (and `hpsearch --version`) stays quick. Running studies from Python:
`hpsearch.api`.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("hpsearch")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

# Public name -> the module that defines it.
_EXPORTS = {
    "Param": "hpsearch.params",
    "OptimizerSpec": "hpsearch.optimizers",
    "SchedulerSpec": "hpsearch.schedulers",
    "Budget": "hpsearch.schedulers",
    "register_optimizer": "hpsearch.plugins",
    "register_scheduler": "hpsearch.plugins",
    "searches": "hpsearch.models",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'hpsearch' has no attribute {name!r}")
