"""How big and how slow a study's page is in optuna-dashboard: the study detail response
(`/api/studies/<id>?after=0`, what the dashboard's frontend loads first and polls), its size
broken down by part, and its load time.

    python scripts/bench_dashboard.py --storage sqlite:////tmp/big.db
    python scripts/bench_dashboard.py --storage sqlite:////tmp/big.db --build 5000
    python scripts/bench_dashboard.py --storage sqlite:////tmp/big.db \\
        --compare sqlite:////tmp/big_old.db --labels now before

`--build N` first runs `hpsearch optimize --study STUDY --trials N` on the storage (resuming
it up to N). Each storage is served by optuna-dashboard's own WSGI app (wsgiref, in a thread,
as `hpsearch dashboard` serves it), read over HTTP with urllib: `--requests` loads with the
dashboard's trial cache emptied first (the storage read and the serialization: a page opened
or polled after the cache's 10 s), then as many with the cache warm (serialization only);
medians, interleaved between the storages. The sizes: each part's JSON in the response, per
trial and in all; and what the storage holds per trial (its user attrs, untruncated: the
dashboard cuts a JSON attr at 1,024 characters, a storage read does not).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from datetime import datetime
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna
import optuna_dashboard

from hpsearch.storage.urls import open_storage

# The parts of a serialized trial that get their own line; the rest is "trial: other".
TRIAL_PARTS = ("params", "intermediate_values", "user_attrs")


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class Served:
    """One storage served by optuna-dashboard's app on a free port, in a thread."""

    def __init__(self, url: str, study: str):
        self.storage = open_storage(url, write_behind=False)
        self.study_id = self.storage.get_study_id_from_name(study)
        self.app = optuna_dashboard.wsgi(self.storage)
        self.server: WSGIServer = make_server("127.0.0.1", 0, self.app, handler_class=_Quiet)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.address = (f"http://127.0.0.1:{self.server.server_address[1]}"
                        f"/api/studies/{self.study_id}?after=0")

    def load(self, cold: bool) -> tuple[float, bytes]:
        cache = self.app._inmemory_cache
        if cold:
            cache.clear()
        else:  # its trials as fresh as they were just read: the load serializes them only
            cache._trials_last_fetched_at[self.study_id] = datetime.now()
        started = time.perf_counter()
        with urllib.request.urlopen(self.address) as response:
            body = response.read()
        return time.perf_counter() - started, body

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def size(value: Any) -> int:
    return len(json.dumps(value))


def breakdown(body: bytes) -> tuple[int, Counter]:
    """The response's trials and its bytes by part."""
    detail = json.loads(body)
    parts: Counter = Counter()
    for trial in detail["trials"]:
        rest = dict(trial)
        for part in TRIAL_PARTS:
            del rest[part]
        parts["trial: params"] += size(trial["params"])
        parts["trial: intermediate values"] += size(trial["intermediate_values"])
        for attr in trial["user_attrs"]:
            parts[f"trial: user attr {attr['key']}"] += size(attr)
        parts["trial: other (ids, state, values, dates, note)"] += size(rest)
    for figure in detail["plotly_graph_objects"]:
        parts[f"study: figure {figure['id']}"] += size(figure)
    parts["study: note"] += size(detail["note"])
    parts["study: user attrs"] += size(detail["user_attrs"])
    parts["study: best trials"] += size(detail["best_trials"])
    accounted = {"trials", "plotly_graph_objects", "note", "user_attrs", "best_trials"}
    parts["study: other (search spaces, ...)"] += size(
        {k: v for k, v in detail.items() if k not in accounted})
    return len(detail["trials"]), parts


def stored_attrs(served: Served) -> Counter:
    """Bytes of each user attr's JSON as the storage holds it, over the study's trials."""
    held: Counter = Counter()
    for trial in served.storage.get_all_trials(served.study_id, deepcopy=False):
        for key, value in trial.user_attrs.items():
            held[key] += size(value)
    return held


def build(url: str, study: str, trials: int) -> None:
    subprocess.run([sys.executable, "-m", "hpsearch", "optimize", "--study", study,
                    "--trials", str(trials), "--storage", url, "--quiet"], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", required=True)
    parser.add_argument("--study", default="wine")
    parser.add_argument("--build", type=int, metavar="N",
                        help="first search the study up to N finished trials")
    parser.add_argument("--compare", metavar="URL", help="another storage holding the study")
    parser.add_argument("--labels", nargs=2, default=("storage", "compare"))
    parser.add_argument("--requests", type=int, default=5)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.build:
        build(args.storage, args.study, args.build)
    urls = [args.storage] + ([args.compare] if args.compare else [])
    labels = list(args.labels[:len(urls)])
    served = [Served(url, args.study) for url in urls]
    try:
        cold: dict[str, list[float]] = {label: [] for label in labels}
        warm: dict[str, list[float]] = {label: [] for label in labels}
        bodies: dict[str, bytes] = {}
        for _ in range(args.requests):  # interleaved: a busy moment slows every storage alike
            for label, one in zip(labels, served, strict=True):
                seconds, bodies[label] = one.load(cold=True)
                cold[label].append(seconds)
        for _ in range(args.requests):
            for label, one in zip(labels, served, strict=True):
                warm[label].append(one.load(cold=False)[0])
        held = {label: stored_attrs(one) for label, one in zip(labels, served, strict=True)}
    finally:
        for one in served:
            one.close()
    report(labels, bodies, cold, warm, held)


def report(labels: list[str], bodies: dict[str, bytes], cold: dict[str, list[float]],
           warm: dict[str, list[float]], held: dict[str, Counter]) -> None:
    counts, parts = {}, {}
    for label in labels:
        counts[label], parts[label] = breakdown(bodies[label])
    names = sorted(set().union(*parts.values()), key=lambda n: -parts[labels[0]].get(n, 0))
    ratio = len(labels) == 2
    width = max(len(n) for n in names) + 2
    header = "".join(f"{label:>14}" for label in labels) + ("   ratio" if ratio else "")

    def row(name: str, values: list[float], fmt: str) -> None:
        cells = "".join(format(v, fmt).rjust(14) for v in values)
        tail = f"{values[0] / values[1]:8.2f}" if ratio and values[1] else ""
        print(f"{name:<{width}}{cells}{tail}")

    print(f"{'':<{width}}{header}")
    row("trials", [counts[label] for label in labels], "d")
    row("response, MB", [len(bodies[label]) / 1e6 for label in labels], ".2f")
    row("response, bytes a trial", [len(bodies[label]) / counts[label] for label in labels],
        ".0f")
    row("load, storage read (median s)", [statistics.median(cold[label]) for label in labels],
        ".3f")
    row("load, cache warm (median s)", [statistics.median(warm[label]) for label in labels],
        ".3f")
    print("\nresponse by part, bytes a trial (study-level parts: their bytes / trials)")
    for name in names:
        row(name, [parts[label].get(name, 0) / counts[label] for label in labels], ".0f")
    print("\nstored user attrs (untruncated JSON), bytes a trial")
    keys = sorted(set().union(*held.values()), key=lambda k: -held[labels[0]].get(k, 0))
    for key in keys:
        row(key, [held[label].get(key, 0) / counts[label] for label in labels], ".0f")


if __name__ == "__main__":
    main()
