"""torch CPU threads for hpsearch's models: 1 against 2, side by side in one process.

    .venv/bin/python scripts/bench_threads.py --repeats 5

Trains the same configuration of each bundled study with 1 and 2 torch threads, alternating,
and prints the median milliseconds per epoch and the ratio. `hpsearch optimize` uses 1 thread
(`--threads`), and several workers use one each.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from hpsearch.config import load_study_config
from hpsearch.training import train_configuration

STUDIES = ("wine", "breast_cancer", "digits")


def ms_per_epoch(study: str, threads: int) -> float:
    torch.set_num_threads(threads)
    config = load_study_config(study).one_run()
    data = config.load_data()
    params = config.space.complete({"optimizer": "adam", "lr": "0.01", "scheduler": "cosine"})
    started = time.perf_counter()
    run = train_configuration(config, data, params, seed=0)
    return 1000 * (time.perf_counter() - started) / len(run.result.history)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print("| study | 1 thread (ms/epoch) | 2 threads (ms/epoch) | 2 threads / 1 thread |")
    print("|---|---:|---:|---:|")
    for study in STUDIES:
        times: dict[int, list[float]] = {1: [], 2: []}
        ms_per_epoch(study, 1)  # warm-up: first-call allocations and imports
        for _ in range(args.repeats):
            for threads in (1, 2):
                times[threads].append(ms_per_epoch(study, threads))
        one, two = statistics.median(times[1]), statistics.median(times[2])
        print(f"| {study} | {one:.3f} | {two:.3f} | {two / one:.2f} |")


if __name__ == "__main__":
    main()
