"""The README is the user's manual: it must name everything a user can choose."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hpsearch.cli import cli
from hpsearch.config import PRUNERS, SAMPLERS
from hpsearch.data import DATASETS
from hpsearch.models import MODELS
from hpsearch.space import base_params

README = (Path(__file__).parent.parent / "README.md").read_text()


def _search_space_table() -> set[str]:
    """The parameter names in the first column of the README's search-space table."""
    rows = README.split("| parameter | where |", 1)[1].split("\n\n", 1)[0].splitlines()
    return {name for row in rows[2:] for name in re.findall(r"`(\w+)`", row.split("|")[1])}


@pytest.mark.parametrize("name", sorted(base_params()))
def test_readme_documents_every_parameter(name):
    assert name in _search_space_table()


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_readme_documents_every_command(command):
    assert f"hpsearch {command}" in README


@pytest.mark.parametrize(
    "choice", [*SAMPLERS, *PRUNERS, *DATASETS, *MODELS], ids=str)
def test_readme_documents_every_registered_choice(choice):
    assert choice in README


def test_readme_set_up_commands_are_what_ci_runs():
    ci = (Path(__file__).parent.parent / ".ci/run").read_text()
    test_command = "scripts/setup.sh && .venv/bin/python -m pytest"
    assert test_command in README and test_command in ci
