"""A digest of a seeded search: every trial's number, state, value, params and intermediate
values (6 significant digits), hashed. Two versions of hpsearch that search alike print the
same digest; a restructuring of the code must not change it.

    .venv/bin/python scripts/search_digest.py --study wine --trials 200 --engine cohort
    .venv/bin/python scripts/search_digest.py --study wine --trials 60 --engine reference

Runs `hpsearch optimize` (the command a user runs, from the current folder's checkout) on a
fresh SQLite file, then reads the study with plain Optuna.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import optuna


def rounded(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.6g}")
    return value


def trial_record(trial: optuna.trial.FrozenTrial) -> list[Any]:
    return [
        trial.number,
        trial.state.name,
        rounded(trial.value),
        sorted((name, rounded(value)) for name, value in trial.params.items()),
        sorted((step, rounded(value)) for step, value in trial.intermediate_values.items()),
    ]


def digest(study: optuna.Study) -> str:
    records = [trial_record(t) for t in sorted(study.get_trials(deepcopy=False),
                                               key=lambda t: t.number)]
    return hashlib.sha256(json.dumps(records).encode()).hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="wine")
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--engine", default="cohort", choices=("cohort", "reference"))
    parser.add_argument("--extra", nargs="*", default=[],
                        help="more options for hpsearch optimize")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'digest.db'}"
        subprocess.run([sys.executable, "-m", "hpsearch", "optimize", "--study", args.study,
                        "--trials", str(args.trials), "--engine", args.engine, "--storage",
                        url, "--quiet", "--device", "cpu", *args.extra],
                       check=True, stdout=subprocess.DEVNULL)
        names = optuna.get_all_study_names(url)
        study = optuna.load_study(study_name=names[0], storage=url)
        states = {}
        for trial in study.get_trials(deepcopy=False):
            states[trial.state.name] = states.get(trial.state.name, 0) + 1
        print(f"{args.study} {args.engine} {args.trials}: digest {digest(study)} "
              f"({', '.join(f'{k.lower()} {v}' for k, v in sorted(states.items()))})")


if __name__ == "__main__":
    main()
