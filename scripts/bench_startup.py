"""How long the `hpsearch` command takes before (and around) its work: the interpreter alone,
importing torch and Optuna, `--help` of the command and of each subcommand, `studies`,
`report`, and a 200-trial wine search on a fresh SQLite file, each in a fresh process; medians
of `--repeats` runs, interleaved (run k of every command, then run k+1), printed as a
markdown table.

For the search, the table also gives its own time as the command reports it ("ran 200 trials
in X s") and what is left of the wall time once that and the import of torch and Optuna are
taken away: hpsearch's own start-up and finish.

    .venv/bin/python scripts/bench_startup.py --repeats 5
    .venv/bin/python scripts/bench_startup.py --checkout /tmp/other   # another copy's hpsearch
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

COMMANDS = ("optimize", "train", "studies", "space", "dashboard", "report", "export",
            "confirm")
SEARCH = ("optimize", "--study", "wine", "--trials", "200", "--quiet")
SEARCH_LABEL = "hpsearch optimize --study wine --trials 200"
SEARCH_TIME = re.compile(r"ran \d+ trials in ([0-9.]+) s")


def timed(args: list[str], cwd: Path) -> tuple[float, str]:
    """Wall seconds of one run of `args`, and its output."""
    started = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=True)
    return time.perf_counter() - started, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--checkout", type=Path, default=Path(__file__).resolve().parents[1],
                        help="the source tree whose hpsearch runs (default: this one)")
    args = parser.parse_args()
    python = sys.executable
    hpsearch = [python, "-m", "hpsearch"]
    with tempfile.TemporaryDirectory() as folder:
        report_db = f"sqlite:///{Path(folder) / 'report.db'}"
        timed([*hpsearch, *SEARCH, "--storage", report_db], args.checkout)  # for `report`
        rows: dict[str, list[float]] = {}
        searched: list[float] = []
        for run in range(args.repeats):
            steps = {
                "python -c pass": [python, "-c", "pass"],
                'python -c "import torch, optuna"': [python, "-c", "import torch, optuna"],
                "hpsearch --help": [*hpsearch, "--help"],
                "hpsearch --version": [*hpsearch, "--version"],
                **{f"hpsearch {name} --help": [*hpsearch, name, "--help"]
                   for name in COMMANDS},
                "hpsearch studies": [*hpsearch, "studies", "--storage", report_db],
                "hpsearch report --study wine": [*hpsearch, "report", "--study", "wine",
                                                 "--storage", report_db],
                SEARCH_LABEL: [
                    *hpsearch, *SEARCH, "--storage",
                    f"sqlite:///{Path(folder) / f'search{run}.db'}"],
            }
            for label, command in steps.items():
                seconds, output = timed(command, args.checkout)
                rows.setdefault(label, []).append(seconds)
                if label == SEARCH_LABEL:
                    searched.append(float(SEARCH_TIME.search(output).group(1)))
    imports = statistics.median(rows['python -c "import torch, optuna"'])
    print(f"median of {args.repeats} runs, {args.checkout}\n")
    print("| command | wall time | search (its summary) | wall - search - import |")
    print("|---|---:|---:|---:|")
    for label, seconds in rows.items():
        wall = statistics.median(seconds)
        if label == SEARCH_LABEL:
            search = statistics.median(searched)
            rest = statistics.median(w - s for w, s in zip(seconds, searched, strict=True))
            print(f"| `{label}` | {wall:.2f} s | {search:.2f} s | {rest - imports:.2f} s |")
        else:
            print(f"| `{label}` | {wall:.2f} s | | |")


if __name__ == "__main__":
    main()
