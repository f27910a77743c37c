"""How long `hpsearch report` and `hpsearch export` take on a 1,000-trial study.

The study is built without training: the wine study's real search space draws each trial's
parameters (random sampler), and each trial gets what the objective stores (100 per-epoch
validation losses, the lr curve, accuracy, epochs run, end reason); about a third are pruned
at epoch 20 and a few diverge. It is written once to a real SQLite file, then timed.

    python scripts/bench_report.py                 # 1000 trials, median of 5 runs
    python scripts/bench_report.py --trials 3000 --runs 3
    python scripts/bench_report.py --db /tmp/bench.db   # keep the study: later runs reuse it
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna

from hpsearch.config import load_study_config
from hpsearch.export import build_report, export_report, renderer
from hpsearch.report import param_importances, summary, trials_frame, verdict
from hpsearch.studies import load_stored_study

EPOCHS = 100


def build_study(url: str, name: str, n_trials: int, seed: int = 0) -> None:
    """Draw `n_trials` trials in memory (fast), then copy them into the storage at `url`."""
    config = load_study_config("wine").one_run()
    memory = optuna.create_study(study_name=name,
                                 sampler=optuna.samplers.RandomSampler(seed=seed))
    rng = np.random.default_rng(seed)
    for _ in range(n_trials):
        trial = memory.ask()
        params = config.space.suggest(trial)
        floor = 0.02 + abs(math.log10(params["lr"]) + 2) * rng.uniform(0.05, 0.3)
        losses = floor + (1.1 - floor) * np.exp(-np.arange(1, EPOCHS + 1) / rng.uniform(3, 30))
        fate = rng.uniform()
        epochs = EPOCHS if fate > 0.35 else 20
        for epoch in range(1, epochs + 1):
            trial.report(float(losses[epoch - 1]), epoch)
        reason = "completed" if epochs == EPOCHS else "diverged" if fate < 0.03 else "pruned"
        attrs = {"seed": 42 + trial.number, "epochs_run": epochs, "end_reason": reason,
                 "lr_curve": [params["lr"] * 0.97**e for e in range(epochs)],
                 "train_loss": float(losses[epochs - 1]) * 0.9,
                 "val_accuracy": float(max(0.3, 1 - losses[epochs - 1]))}
        if reason != "completed":
            attrs["end_detail"] = f"{reason} at epoch {epochs}"
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        state = optuna.trial.TrialState.COMPLETE if reason == "completed" \
            else optuna.trial.TrialState.PRUNED
        memory.tell(trial, float(losses[epochs - 1]) if reason == "completed" else None,
                    state=state)
    stored = optuna.create_study(study_name=name, storage=url)
    stored.add_trials(memory.get_trials(deepcopy=False))


def median_seconds(action: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--db", type=Path, help="SQLite file to keep the study in (building "
                        "it takes about a minute per 1,000 trials); reused when it exists")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{args.db or Path(folder) / 'bench.db'}"
        name = f"bench{args.trials}"
        if args.db is None or not args.db.exists():
            started = time.perf_counter()
            build_study(url, name, args.trials)
            print(f"built a {args.trials}-trial study on SQLite in "
                  f"{time.perf_counter() - started:.1f} s")
        trials = load_stored_study(name, url).get_trials(deepcopy=False)
        counts = {s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "PRUNED")}
        print(f"study {name!r}: {len(trials)} trials, {counts['COMPLETE']} complete, "
              f"{counts['PRUNED']} pruned or diverged")
        frame = trials_frame(trials)
        steps: dict[str, Callable[[], object]] = {
            "read the study (get_trials)": lambda: load_stored_study(name, url).get_trials(
                deepcopy=False),
            "trials_frame (from read trials)": lambda: trials_frame(trials),
            "3 summaries + verdict": lambda: ([summary(frame, by) for by in
                                              ("scheduler", "optimizer", "pair")],
                                             verdict(frame)),
            "param_importances (fANOVA)": lambda: param_importances(trials),
            "hpsearch report (build + render)": lambda: renderer("table")(
                build_report(name, url)),
            "hpsearch export (files + plots)": lambda: export_report(
                name, url, Path(folder) / "out"),
        }
        print(f"median of {args.runs} runs:")
        for label, action in steps.items():
            runs = args.runs if "export" not in label else max(1, args.runs // 2)
            print(f"  {label:<36} {median_seconds(action, runs):7.3f} s")


if __name__ == "__main__":
    main()
