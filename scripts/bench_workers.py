"""How much faster does `--workers 2` search than one worker? Runs the same wine study with 1
and 2 workers on SQLite and on PostgreSQL, interleaved, several times each (run k with study
seed k, for 1 and 2 workers alike), and prints a markdown table: trials/s and epochs/s
(median), and the 2-vs-1 ratios.

Throughput is measured over the trials themselves (first trial started to last trial ended,
read from the study), so the seconds a spawned worker needs to import torch do not count; the
wall time of the whole call, start-up included, is shown beside it. Epochs/s is the fairer
compute measure: with 2 workers the sampler proposes other trials, and pruning ends them after
other numbers of epochs.

    .venv/bin/python scripts/bench_workers.py --trials 60 --repeats 3
    .venv/bin/python scripts/bench_workers.py --postgres ''   # SQLite only
    .venv/bin/python scripts/bench_workers.py --engine cohort
    .venv/bin/python scripts/bench_workers.py --no-pruning   # every trial 100 epochs

With `--no-pruning` the study's pruner is off: every trial trains its 100 epochs, so the trial
rate no longer depends on how early the search's trials happen to be pruned (which differs
from one search to the next by more than the workers' speed-up), and the ratio of trials/s is
the workers' own.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

import optuna
import torch

from hpsearch.config import load_study_config
from hpsearch.engines import COHORT, REFERENCE
from hpsearch.search.run import run_search

DEFAULT_POSTGRES = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


def measure(url: str, trials: int, workers: int, engine: str, seed: int,
            pruning: bool) -> dict[str, float]:
    config = replace(load_study_config("wine").one_run(), seed=seed).renamed(
        f"bench_{uuid.uuid4().hex[:8]}")
    if not pruning:
        config = replace(config, pruner=replace(config.pruner, kind="none"))
    started = time.perf_counter()
    outcome = run_search(config, url, trials, workers=workers, engine=engine)
    wall = time.perf_counter() - started
    done = [t for t in outcome.study.get_trials() if t.state.is_finished()]
    span = (max(t.datetime_complete for t in done)
            - min(t.datetime_start for t in done)).total_seconds()
    epochs = sum(t.user_attrs.get("epochs_run", 0) for t in done)
    return {"trials/s": len(done) / span, "epochs/s": epochs / span, "wall s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES,
                        help="libpq connection string of a server where a scratch database "
                             "may be created ('' to skip PostgreSQL)")
    parser.add_argument("--engine", choices=(REFERENCE, COHORT), default=REFERENCE,
                        help="the engine each worker runs (default: reference)")
    parser.add_argument("--no-pruning", action="store_true",
                        help="turn the study's pruner off (every trial trains every epoch)")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the workers inherit it
    # One worker runs in this process with `hpsearch optimize`'s default of 1 torch thread,
    # as each spawned worker does.
    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp(prefix="bench_workers_"))
    storages = {"SQLite": lambda run: f"sqlite:///{folder / f'{run}.db'}"}
    admin = scratch = None
    if args.postgres:
        import psycopg

        scratch = f"hpsearch_bench_{uuid.uuid4().hex[:8]}"
        admin = psycopg.connect(args.postgres, autocommit=True)
        admin.execute(f"CREATE DATABASE {scratch}")
        info = admin.info
        storages["PostgreSQL"] = lambda run: (
            f"postgresql+psycopg://{info.user}@{info.host}:{info.port}/{scratch}")
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    try:
        for repeat in range(args.repeats):
            for name, url_for in storages.items():
                for workers in (1, 2):
                    # Run k searches with seed k, with 1 and with 2 workers: one seed's
                    # search is one draw of how long its trials survive pruning.
                    result = measure(url_for(f"{repeat}_{workers}"), args.trials, workers,
                                     args.engine, seed=repeat, pruning=not args.no_pruning)
                    results.setdefault((name, workers), []).append(result)
                    print(f"# {name}, {workers} worker(s), run {repeat + 1}: "
                          + ", ".join(f"{k} {v:.2f}" for k, v in result.items()), flush=True)
    finally:
        if admin is not None:
            admin.execute(f"DROP DATABASE {scratch} WITH (FORCE)")
            admin.close()
    print(f"\nwine study, {args.engine} engine, {args.trials} trials per run, median of "
          f"{args.repeats} runs" + (", pruner off" if args.no_pruning else "") + "\n")
    print("| storage | workers | trials/s | epochs/s | wall s | ratio trials/s | "
          "ratio epochs/s | ratio wall |")
    print("|---|---|---|---|---|---|---|---|")
    for name in storages:
        medians = {workers: {key: statistics.median(r[key] for r in results[(name, workers)])
                             for key in results[(name, workers)][0]} for workers in (1, 2)}
        for workers, m in medians.items():
            ratios = " | | |" if workers == 1 else (
                f" {m['trials/s'] / medians[1]['trials/s']:.2f}x |"
                f" {m['epochs/s'] / medians[1]['epochs/s']:.2f}x |"
                f" {medians[1]['wall s'] / m['wall s']:.2f}x |")
            print(f"| {name} | {workers} | {m['trials/s']:.2f} | {m['epochs/s']:.0f} | "
                  f"{m['wall s']:.1f} |{ratios}")


if __name__ == "__main__":
    main()
