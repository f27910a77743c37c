"""hpsearch: joint optimizer x learning-rate-schedule search for PyTorch training, on Optuna."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hpsearch")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
