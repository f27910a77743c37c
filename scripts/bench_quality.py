"""Does the search's winner hold up? For each study and study seed, run the search twice, with
the study's `[evaluation]` (or `--evaluation FOLDS SEEDS`) and with one run per trial (same
trial count), confirm each (the top 3 and each scheduler's best, over 10 fresh seeds), and
print, side by side:

- regret: the confirmed mean validation loss of the search's reported winner / the best
  confirmed mean among all configurations confirmed (1: the winner is the best);
- rho: Spearman's rank correlation between the search's value and the confirmed mean, over
  the confirmed configurations;
- schedule: whether the search's winning schedule agrees with confirmation's (the same, or
  one confirmation finds tied or inconclusive with its best);
- the search's wall time and the member-epochs it trained.

    .venv/bin/python scripts/bench_quality.py --studies wine breast_cancer digits --seeds 0 1 2
    .venv/bin/python scripts/bench_quality.py --studies wine --evaluation 5 1 --trials 200
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import optuna
from scipy import stats

import hpsearch.api as hp
from hpsearch.records import ATTR_EPOCHS_RUN, best_of

CONFIRM_SEEDS = 10
CONFIRM_TOP = 3


def variant(study: str, seed: int, folds: int | None, seeds: int | None,
            pruner: str | None = None) -> hp.StudyConfig:
    """The built-in study with another seed, and its own evaluation, or the given one; its
    own pruner, or the given kind."""
    document = hp.config(study).as_dict()
    document["seed"] = seed
    if folds is not None:
        document["evaluation"] = {"folds": folds, "seeds": seeds}
    if pruner is not None:
        document.setdefault("pruner", {})["kind"] = pruner
    runs = hp.config(document).evaluation
    document["name"] = f"{study}_s{seed}_{runs.folds}x{runs.seeds}_{pruner or 'own'}"
    return hp.config(document)


def measure(config: hp.StudyConfig, trials: int, folder: Path) -> dict:
    url = f"sqlite:///{folder / (config.name + '.db')}"
    started = time.perf_counter()
    outcome = hp.search(config, trials, storage=url)
    seconds = time.perf_counter() - started
    runs = config.evaluation.runs
    member_epochs = sum(t.user_attrs.get(ATTR_EPOCHS_RUN, 0) for t in
                        outcome.study.get_trials(deepcopy=False)) * runs
    winner = best_of(outcome.study.get_trials(deepcopy=False))
    confirmed = hp.confirm(config.name, top=CONFIRM_TOP, seeds=CONFIRM_SEEDS, storage=url)
    table = confirmed.analysis.table
    means = dict(zip(table["config"], table["val_loss_mean"], strict=True))
    regret = means[f"#{winner.number}"] / min(means.values())
    searched = table.dropna(subset=["search_value"])
    rho = stats.spearmanr(searched["search_value"], searched["val_loss_mean"]).statistic
    best_schedule = table.iloc[0]["scheduler"]
    ours = winner.params["scheduler"]
    comparisons = confirmed.analysis.comparisons
    against = comparisons[(comparisons["question"] == "schedule")
                          & comparisons["other"].str.startswith(f"{ours} ")]
    agrees = ours == best_schedule or (
        not against.empty and against.iloc[0]["outcome"] in ("tied", "inconclusive"))
    return {"regret": regret, "rho": rho, "schedule": agrees, "seconds": seconds,
            "member_epochs": member_epochs, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", nargs="+", default=["wine", "breast_cancer", "digits"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--evaluation", nargs=2, type=int, metavar=("FOLDS", "SEEDS"),
                        help="instead of each study's own [evaluation]")
    parser.add_argument("--pruner", metavar="KIND",
                        help="compare the evaluated search with this pruner against the same "
                             "evaluation with the study's own pruner (instead of one run)")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    folds, seeds = args.evaluation or (None, None)
    rows = []
    baseline_label = "study's pruner" if args.pruner else "one run"
    with tempfile.TemporaryDirectory() as folder:
        for study in args.studies:
            for seed in args.seeds:
                baseline = (variant(study, seed, folds, seeds) if args.pruner
                            else variant(study, seed, 1, 1))
                for label, config in (
                        ("evaluated", variant(study, seed, folds, seeds, args.pruner)),
                        (baseline_label, baseline)):
                    result = measure(config, args.trials, Path(folder))
                    rows.append((study, seed, label, result))
                    print(f"# {study} seed {seed} {label} ({result['runs']} runs): "
                          f"regret {result['regret']:.3f}, rho {result['rho']:.2f}, schedule "
                          f"{'agrees' if result['schedule'] else 'DISAGREES'}, "
                          f"{result['seconds']:.1f} s, {result['member_epochs']} member-epochs",
                          flush=True)
    print(f"\n{args.trials} trials per search; confirmation: top {CONFIRM_TOP} and each "
          f"scheduler's best over {CONFIRM_SEEDS} fresh seeds; medians over study seeds "
          f"{', '.join(map(str, args.seeds))}\n")
    print("| study | search | runs per trial | regret | rho | schedule agrees | search s "
          "| member-epochs |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for study in args.studies:
        for label in ("evaluated", baseline_label):
            mine = [r for s, _, lab, r in rows if s == study and lab == label]
            median = {key: statistics.median(r[key] for r in mine)
                      for key in ("regret", "rho", "seconds", "member_epochs")}
            agreeing = sum(r["schedule"] for r in mine)
            print(f"| {study} | {label} | {mine[0]['runs']} | {median['regret']:.3f} | "
                  f"{median['rho']:.2f} | {agreeing} of {len(mine)} | {median['seconds']:.1f} "
                  f"| {median['member_epochs']:.0f} |")
        times = {lab: statistics.median(r["seconds"] for s, _, la, r in rows
                                        if s == study and la == lab)
                 for lab in ("evaluated", baseline_label)}
        print(f"| {study} | evaluated / {baseline_label}, wall time | | | | | "
              f"{times['evaluated'] / times[baseline_label]:.2f}x | |")


if __name__ == "__main__":
    main()
