"""How long the `hpsearch` command takes before (and around) its work: the interpreter alone,
importing torch and Optuna, `--help` of the command and of each subcommand, `studies`,
`report`, a 200-trial wine search on a fresh SQLite file (in one process and with
`--workers 2`) and `confirm` of it; each in a fresh process; medians of `--repeats` runs,
interleaved (run k of every command, then run k+1), printed as a markdown table.

For the searches and the confirmation, the table also gives their own time as the command
reports it ("ran 200 trials in X s", "ran N runs in X s") and what is left of the wall time once
that and the import of torch and Optuna are taken away: hpsearch's own start-up and finish.

`--baseline` runs another source tree's hpsearch next to this one's, command by command (the
same repeat of both, one after the other), and adds its columns and the run-by-run ratio of
the wall times (`bench_ratios.paired`).

    .venv/bin/python scripts/bench_startup.py --repeats 5
    .venv/bin/python scripts/bench_startup.py --repeats 3 --baseline /tmp/base   # side by side
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_ratios import paired

COMMANDS = ("optimize", "train", "studies", "space", "dashboard", "report", "export",
            "confirm")
SEARCH = ("optimize", "--study", "wine", "--trials", "200", "--quiet")
SEARCH_LABEL = "hpsearch optimize --study wine --trials 200"
WORKERS_LABEL = f"{SEARCH_LABEL} --workers 2"
CONFIRM = ("confirm", "--study", "wine", "--top", "3", "--seeds", "10")
CONFIRM_LABEL = "hpsearch confirm --study wine --top 3 --seeds 10"
OWN_TIME = re.compile(r"ran \d+ (?:trials|runs) in ([0-9.]+) s")


def timed(args: list[str], cwd: Path) -> tuple[float, str]:
    """Wall seconds of one run of `args`, and its output."""
    started = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=True)
    return time.perf_counter() - started, done.stdout


def steps(python: str, folder: Path, tree: str, run: int) -> dict[str, list[str]]:
    """Each command of repeat `run`, by label; `tree` names the files of one source tree."""
    hpsearch = [python, "-m", "hpsearch"]
    report_db = f"sqlite:///{folder / f'report-{tree}.db'}"
    searched = f"sqlite:///{folder / f'search-{tree}-{run}.db'}"
    return {
        "python -c pass": [python, "-c", "pass"],
        'python -c "import torch, optuna"': [python, "-c", "import torch, optuna"],
        "hpsearch --help": [*hpsearch, "--help"],
        "hpsearch --version": [*hpsearch, "--version"],
        **{f"hpsearch {name} --help": [*hpsearch, name, "--help"] for name in COMMANDS},
        "hpsearch studies": [*hpsearch, "studies", "--storage", report_db],
        "hpsearch report --study wine": [*hpsearch, "report", "--study", "wine",
                                         "--storage", report_db],
        SEARCH_LABEL: [*hpsearch, *SEARCH, "--storage", searched],
        CONFIRM_LABEL: [*hpsearch, *CONFIRM, "--storage", searched],
        WORKERS_LABEL: [*hpsearch, *SEARCH, "--workers", "2", "--storage",
                        f"sqlite:///{folder / f'workers-{tree}-{run}.db'}"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--checkout", type=Path, default=Path(__file__).resolve().parents[1],
                        help="the source tree whose hpsearch runs (default: this one)")
    parser.add_argument("--baseline", type=Path,
                        help="another source tree, run side by side with --checkout")
    args = parser.parse_args()
    trees = {"now": args.checkout, **({"baseline": args.baseline} if args.baseline else {})}
    python = sys.executable
    walls: dict[str, dict[str, list[float]]] = {tree: {} for tree in trees}
    owns: dict[str, dict[str, list[float]]] = {tree: {} for tree in trees}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        for tree, checkout in trees.items():  # the study `report` reads
            timed([python, "-m", "hpsearch", *SEARCH, "--storage",
                   f"sqlite:///{folder / f'report-{tree}.db'}"], checkout)
        for run in range(args.repeats):
            by_tree = {tree: steps(python, folder, tree, run) for tree in trees}
            for label in by_tree["now"]:
                for tree, checkout in trees.items():
                    seconds, output = timed(by_tree[tree][label], checkout)
                    walls[tree].setdefault(label, []).append(seconds)
                    found = OWN_TIME.search(output)
                    if found:
                        owns[tree].setdefault(label, []).append(float(found.group(1)))
    imports = {tree: statistics.median(walls[tree]['python -c "import torch, optuna"'])
               for tree in trees}
    print(f"median of {args.repeats} runs; now: {args.checkout}"
          + (f"; baseline: {args.baseline}" if args.baseline else "") + "\n")
    columns = ["wall time", "its own time (summary)", "wall - own - import"]
    header = [f"{column} ({tree})" for tree in trees for column in columns]
    print("| command | " + " | ".join(header) + (" | baseline / now |" if args.baseline
                                                  else " |"))
    print("|---|" + "---:|" * (len(header) + bool(args.baseline)))
    for label in walls["now"]:
        cells = []
        for tree in trees:
            seconds = walls[tree][label]
            cells.append(f"{statistics.median(seconds):.2f} s")
            own = owns[tree].get(label)
            if own:
                rest = statistics.median(w - s for w, s in zip(seconds, own, strict=True))
                cells += [f"{statistics.median(own):.2f} s", f"{rest - imports[tree]:.2f} s"]
            else:
                cells += ["", ""]
        if args.baseline:
            cells.append(paired(walls["baseline"][label], walls["now"][label]))
        print(f"| `{label}` | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
