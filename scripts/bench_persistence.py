"""What persistence costs: hpsearch (both engines) on in-memory, SQLite and PostgreSQL storage,
against a plain Optuna script written the obvious way, side by side in one run.

    .venv/bin/python scripts/bench_persistence.py --trials 200 --repeats 3

The baseline is the straightforward script: the wine MLP, 100 epochs, `trial.report()` and
`trial.should_prune()` every epoch, MedianPruner, TPE, on Optuna's own storages. Every variant
runs the same number of trials; times are compared per trained epoch, so that different
pruning does not distort the ratios. Prints a markdown table of medians over the repeats, and
each ratio as the median (and range) of its run-by-run ratios: run k of every variant has seed
k, and runs are interleaved, so each pair of runs compared saw the machine at about the same
speed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

import optuna
import sqlalchemy
import torch
from bench_ratios import paired
from torch import nn

from hpsearch.config import load_study_config
from hpsearch.engines import COHORT, REFERENCE
from hpsearch.records import COMPLETED
from hpsearch.search.run import run_search

# The reference engine (one trial at a time) and the cohort engine, `hpsearch optimize`'s
# default for this study.
ENGINES = (REFERENCE, COHORT)
POSTGRES_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
WARM_UP_TRIALS = 20


def baseline(storage: str | None, trials: int, seed: int) -> tuple[float, int]:
    """The plain Optuna script: (seconds, epochs trained)."""
    data = load_study_config("wine").one_run().load_data()
    loss_fn = nn.CrossEntropyLoss()

    def objective(trial: optuna.Trial) -> float:
        torch.manual_seed(seed + trial.number)
        name = trial.suggest_categorical("optimizer", ["sgd", "adam", "rmsprop"])
        lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
        model = nn.Sequential(nn.Linear(13, 10), nn.ReLU(), nn.Linear(10, 10), nn.ReLU(),
                              nn.Linear(10, 3))
        optimizer = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam,
                     "rmsprop": torch.optim.RMSprop}[name](model.parameters(), lr=lr)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=100)
        val_loss = float("inf")
        for epoch in range(100):
            model.train()
            optimizer.zero_grad()
            loss_fn(model(data.train.features), data.train.target).backward()
            optimizer.step()
            scheduler.step()
            model.eval()
            with torch.no_grad():
                val_loss = loss_fn(model(data.valid.features), data.valid.target).item()
            trial.report(val_loss, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return val_loss

    study = optuna.create_study(
        storage=storage, sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=10, n_warmup_steps=20),
    )
    started = time.perf_counter()
    study.optimize(objective, n_trials=trials)
    seconds = time.perf_counter() - started
    return seconds, sum(len(t.intermediate_values) for t in study.trials)


def hpsearch(storage: str, trials: int, seed: int, engine: str) -> tuple[float, int]:
    """`hpsearch optimize --study wine --engine ENGINE` as a library call: (seconds, epochs
    trained)."""
    config = load_study_config("wine").one_run()
    config = replace(config, seed=seed).renamed(f"bench-{uuid.uuid4().hex[:8]}")
    started = time.perf_counter()
    outcome = run_search(config, storage, trials, engine=engine)
    seconds = time.perf_counter() - started
    epochs = sum(t.user_attrs.get("epochs_run", 0) for t in outcome.study.trials)
    assert outcome.counts.finished == trials
    assert any(t.user_attrs.get("end_reason") == COMPLETED for t in outcome.study.trials)
    return seconds, epochs


def postgres_database() -> tuple[str, Callable[[], None]] | None:
    """A fresh PostgreSQL database and a function that drops it; None if there is no server."""
    name = f"hpsearch_bench_{uuid.uuid4().hex[:8]}"
    try:
        admin = sqlalchemy.create_engine(f"{POSTGRES_SERVER}/postgres",
                                         isolation_level="AUTOCOMMIT",
                                         connect_args={"connect_timeout": 3})
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    except sqlalchemy.exc.OperationalError:
        return None

    def drop() -> None:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()

    return f"{POSTGRES_SERVER}/{name}", drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    torch.set_num_threads(1)  # as `hpsearch optimize` does; the baseline gets the same

    folder = Path(tempfile.mkdtemp(prefix="bench_persistence_"))
    postgres = None if args.no_postgres else postgres_database()
    # One database per variant, as a user keeps one for their studies: every run is a new
    # study in it (a new SQLite file would add its tables' creation, 0.1-0.3 s, to one study).
    variants: dict[str, Callable[[int, int], tuple[float, int]]] = {}
    if not args.no_baseline:
        variants["plain Optuna, in-memory"] = partial(baseline, None)
        variants["plain Optuna, SQLite"] = partial(baseline, f"sqlite:///{folder / 'plain.db'}")
    for engine in ENGINES:
        label = f"hpsearch {engine}"
        variants[f"{label}, in-memory"] = partial(hpsearch, "memory", engine=engine)
        variants[f"{label}, SQLite"] = partial(
            hpsearch, f"sqlite:///{folder / f'hpsearch-{engine}.db'}", engine=engine)
        if postgres is not None:
            variants[f"{label}, PostgreSQL"] = partial(hpsearch, postgres[0], engine=engine)

    # Warm-up, not timed: the first search of a process pays for imports and first calls
    # (torch's optimizers import torch._dynamo, ~1 s), and a database's first study for its
    # tables; either would be charged to one variant's first run.
    for run in variants.values():
        run(trials=WARM_UP_TRIALS, seed=0)

    results: dict[str, list[tuple[float, int]]] = {name: [] for name in variants}
    try:
        for repeat in range(args.repeats):
            # Run k of every variant has seed k (the same trials on every storage), and runs
            # are interleaved, every other repeat in reverse order: this machine's speed
            # drifts by up to 1.5x within minutes, and a storage's run sits next to the
            # in-memory run it is compared with.
            order = list(variants.items())
            for name, run in order if repeat % 2 == 0 else reversed(order):
                seconds, epochs = run(trials=args.trials, seed=repeat)
                results[name].append((seconds, epochs))
                print(f"  repeat {repeat + 1}: {name}: {seconds:.1f} s, {epochs} epochs",
                      flush=True)
    finally:
        if postgres is not None:
            postgres[1]()

    def median_per_epoch(name: str) -> float:
        return statistics.median(s / e for s, e in results[name])

    def per_epoch(name: str, other: str) -> str:
        """`name`'s time per epoch over `other`'s, run by run."""
        return paired([s / e for s, e in results[name]], [s / e for s, e in results[other]])

    print(f"\n{args.trials} trials of the wine study, median of {args.repeats} runs, "
          f"torch threads 1\n")
    print("| variant | wall time (s) | epochs trained | ms per epoch |")
    print("|---|---:|---:|---:|")
    for name, runs in results.items():
        print(f"| {name} | {statistics.median(s for s, _ in runs):.1f} | "
              f"{statistics.median(e for _, e in runs):.0f} | "
              f"{1000 * median_per_epoch(name):.3f} |")
    print("\nTime per epoch over time per epoch, run by run (same seed), median and range:\n")
    for engine in ENGINES:
        for storage in ("SQLite", "PostgreSQL"):
            name = f"hpsearch {engine}, {storage}"
            if name in results:
                print(f"- {name} / in-memory: "
                      f"{per_epoch(name, f'hpsearch {engine}, in-memory')}")
    if "plain Optuna, SQLite" in results:
        for engine in ENGINES:
            print(f"- plain Optuna, SQLite / hpsearch {engine}, SQLite: "
                  f"{per_epoch('plain Optuna, SQLite', f'hpsearch {engine}, SQLite')}")
        print(f"- plain Optuna: SQLite / in-memory: "
              f"{per_epoch('plain Optuna, SQLite', 'plain Optuna, in-memory')}")
    if postgres is None and not args.no_postgres:
        print("- PostgreSQL: no server at 127.0.0.1:5432, skipped")


if __name__ == "__main__":
    main()
