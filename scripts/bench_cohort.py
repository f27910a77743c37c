"""How much faster is the cohort engine than the reference engine? Four measurements, each
printed as a markdown table (medians over --repeats runs; each run a new study in SQLite):

- wine: the wine study, --trials trials (200), reference vs cohort engine side by side in one
  run (each engine's studies in one file, after an untimed warm-up study): wall time, epochs
  trained, seconds per epoch, best validation loss, and the run-by-run ratios. The digits and
  scaling runs each take a new file.
- digits: the digits study at 100 epochs, --digits-trials trials (1,000) with the cohort engine
  on --device (cpu; cuda where there is a GPU), and --digits-reference trials (100) with the
  reference engine for a per-epoch comparison.
- scaling: the wine study with cohorts of 8, 32, 128 and 512 trials (--sizes): time per trial,
  time per trained epoch, and the process's peak memory (each size in its own process).
- quality: what a wider cohort (or a later refill) gains in time and costs the search: the
  wine, breast cancer and digits studies (as their files define them), --trials trials, with
  cohorts of --quality-sizes (32, 64), refilled once 1/N of them is free for each N of
  --refill-at (the engine's), over --seeds study seeds (5): wall time, epochs, the best
  validation loss and the mean of the 10 best (medians over seeds; each seed's searches
  interleaved).

    .venv/bin/python scripts/bench_cohort.py --part wine --repeats 3
    .venv/bin/python scripts/bench_cohort.py --part digits --device cuda
    .venv/bin/python scripts/bench_cohort.py --part scaling
    .venv/bin/python scripts/bench_cohort.py --part quality
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import optuna
import torch
from bench_ratios import paired
from optuna.trial import TrialState

from hpsearch.config import StudyConfig, load_study_config
from hpsearch.engines import COHORT, DEFAULT_COHORT_SIZE, REFERENCE
from hpsearch.search import driver
from hpsearch.search.run import run_search

WARM_UP_TRIALS = 20


def with_epochs(config: StudyConfig, epochs: int | None) -> StudyConfig:
    if epochs is None:
        return config
    return dataclasses.replace(config, training=dataclasses.replace(config.training,
                                                                    epochs=epochs))


def measure(config: StudyConfig, folder: Path, trials: int, engine: str, cohort_size: int,
            device: str = "cpu", database: str = "") -> dict[str, float]:
    """One search as a new study, in the SQLite file `database` (in `folder`), or in a new
    file of its own."""
    config = config.renamed(f"bench_{uuid.uuid4().hex[:8]}")
    url = f"sqlite:///{folder / (database or f'{config.name}.db')}"
    started = time.perf_counter()
    outcome = run_search(config, url, trials, engine=engine, cohort_size=cohort_size,
                         device=device)
    wall = time.perf_counter() - started
    done = [t for t in outcome.study.get_trials(deepcopy=False) if t.state.is_finished()]
    epochs = sum(t.user_attrs.get("epochs_run", 0) for t in done)
    best = outcome.best_trial
    losses = sorted(t.value for t in done if t.state == TrialState.COMPLETE)
    return {"wall s": wall, "epochs": epochs, "ms/epoch": 1000 * wall / max(epochs, 1),
            "best val loss": best.value if best else float("nan"),
            "mean of 10 best": statistics.mean(losses[:10]) if losses else float("nan"),
            "best val acc": best.user_attrs.get("val_accuracy", float("nan")) if best
            else float("nan")}


def table(title: str, rows: dict[str, list[dict[str, float]]]) -> None:
    print(f"\n{title}\n")
    keys = list(next(iter(rows.values()))[0])
    print("| run | " + " | ".join(keys) + " |")
    print("|---|" + "---:|" * len(keys))
    medians = {name: {k: statistics.median(r[k] for r in runs) for k in keys}
               for name, runs in rows.items()}
    for name, values in medians.items():
        print(f"| {name} | " + " | ".join(_fmt(values[k]) for k in keys) + " |")


def _fmt(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def wine(args: argparse.Namespace, folder: Path) -> None:
    config = load_study_config("wine").one_run()
    # Each engine's studies in one SQLite file, as a user's studies share hpsearch.db; a
    # warm-up study, not timed, creates its tables (a new file's cost, 0.1-0.3 s, would be
    # charged to one run, and weigh 7x more on the faster engine) and pays for imports
    # (scikit-learn, torch._dynamo by torch.optim) and first calls.
    databases = {engine: f"{engine}.db" for engine in (REFERENCE, COHORT)}
    size = args.cohort_size
    for engine in (REFERENCE, COHORT):
        measure(config, folder, WARM_UP_TRIALS, engine, size, database=databases[engine])
    rows: dict[str, list[dict[str, float]]] = {}
    for repeat in range(args.repeats):
        engines = (REFERENCE, COHORT) if repeat % 2 == 0 else (COHORT, REFERENCE)
        for engine in engines:  # interleaved, every other repeat in reverse (drift)
            result = measure(config, folder, args.trials, engine, size,
                             database=databases[engine])
            name = f"{engine}" + (f" (cohort {size})" if engine == COHORT else "")
            rows.setdefault(name, []).append(result)
            print(f"# wine {name}, run {repeat + 1}: {json.dumps(result)}", flush=True)
    table(f"wine, {args.trials} trials, SQLite, median of {args.repeats} runs", rows)
    reference, cohort = rows[REFERENCE], rows[f"{COHORT} (cohort {size})"]

    def by_run(key: str) -> str:
        return paired([run[key] for run in reference], [run[key] for run in cohort])

    print(f"\nreference / cohort, run by run (median and range): wall time {by_run('wall s')}, "
          f"time per epoch {by_run('ms/epoch')}")


def digits(args: argparse.Namespace, folder: Path) -> None:
    config = with_epochs(load_study_config("digits").one_run(), 100)
    rows: dict[str, list[dict[str, float]]] = {}
    for repeat in range(args.repeats):
        runs = [(COHORT, args.digits_trials, args.device)]
        if args.digits_reference:
            runs.append((REFERENCE, args.digits_reference, "cpu"))
        for engine, trials, device in runs:
            result = measure(config, folder, trials, engine, args.cohort_size, device)
            name = f"{engine}, {trials} trials, {device}" + \
                (f", cohort {args.cohort_size}" if engine == COHORT else "")
            rows.setdefault(name, []).append(result)
            print(f"# digits {name}, run {repeat + 1}: {json.dumps(result)}", flush=True)
    table(f"digits, 100 epochs, SQLite, median of {args.repeats} runs", rows)


def scaling(args: argparse.Namespace) -> None:
    rows: dict[str, list[dict[str, float]]] = {}
    for repeat in range(args.repeats):
        for size in args.sizes:
            trials = max(args.trials, 2 * size)
            output = subprocess.run(
                [sys.executable, __file__, "--one-size", str(size), "--trials", str(trials),
                 "--device", args.device],
                check=True, capture_output=True, text=True).stdout
            result = json.loads(output.splitlines()[-1])
            rows.setdefault(f"cohort {size}, {trials} trials", []).append(result)
            print(f"# size {size}, run {repeat + 1}: {json.dumps(result)}", flush=True)
    table(f"wine, cohort sizes, SQLite, {args.device}, median of {args.repeats} runs", rows)


def quality(args: argparse.Namespace, folder: Path) -> None:
    for study in ("wine", "breast_cancer", "digits"):
        base = load_study_config(study).one_run()
        measure(base, folder, WARM_UP_TRIALS, COHORT, args.cohort_size,
                database=f"{study}.db")
        rows: dict[str, list[dict[str, float]]] = {}
        for seed in range(args.seeds):
            config = dataclasses.replace(base, seed=seed)
            for size in args.quality_sizes:
                for refill_at in args.refill_at:
                    driver.REFILL_AT = refill_at
                    result = measure(config, folder, args.trials, COHORT, size,
                                     database=f"{study}.db")
                    name = f"cohort {size}" + (f", refilled at 1/{refill_at} free"
                                               if len(args.refill_at) > 1 else "")
                    rows.setdefault(name, []).append(result)
                    print(f"# {study} {name}, seed {seed}: {json.dumps(result)}", flush=True)
        table(f"{study}, {args.trials} trials, SQLite, median over seeds 0-{args.seeds - 1}",
              rows)


def one_size(args: argparse.Namespace, folder: Path) -> None:
    """One scaling point, in its own process so that its peak memory is its own."""
    config = load_study_config("wine").one_run()
    config.load_data()  # scikit-learn's import is not the search's time
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = measure(config, folder, args.trials, COHORT, args.one_size, args.device)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"ms/trial": 1000 * result["wall s"] / args.trials,
                      "ms/epoch": result["ms/epoch"], "best val loss": result["best val loss"],
                      "peak MiB": peak / 1024, "growth MiB": (peak - before) / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("wine", "digits", "scaling", "quality", "all"),
                        default="all")
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cohort-size", type=int, default=DEFAULT_COHORT_SIZE)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--digits-trials", type=int, default=1000)
    parser.add_argument("--digits-reference", type=int, default=100)
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 32, 128, 512])
    parser.add_argument("--quality-sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--refill-at", type=int, nargs="+",
                        default=[driver.REFILL_AT],
                        help="quality: refill a cohort once 1/N of it is free, for each N")
    parser.add_argument("--one-size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(1)  # as `hpsearch optimize` runs
    folder = Path(tempfile.mkdtemp(prefix="bench_cohort_"))
    if args.one_size:
        one_size(args, folder)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device "
          f"{args.device}" + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda"
                              else ""))
    if args.part in ("wine", "all"):
        wine(args, folder)
    if args.part in ("digits", "all"):
        digits(args, folder)
    if args.part in ("scaling", "all"):
        scaling(args)
    if args.part in ("quality", "all"):
        quality(args, folder)


if __name__ == "__main__":
    main()
