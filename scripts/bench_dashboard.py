"""How big and how slow a study's page is in optuna-dashboard: the study detail response
(`/api/studies/<id>?after=0`, what the dashboard's frontend loads first and polls), its size
broken down by part, and its load time.

    python scripts/bench_dashboard.py --storage sqlite:////tmp/big.db
    python scripts/bench_dashboard.py --storage sqlite:////tmp/big.db --readers write-through rdb
    python scripts/bench_dashboard.py --storage sqlite:////tmp/big.db --build 5000
    python scripts/bench_dashboard.py --storage sqlite:////tmp/big.db \\
        --compare sqlite:////tmp/big_old.db --labels now before

`--build N` first runs `hpsearch optimize --study STUDY --trials N` on the storage (resuming
it up to N). Each storage is served by optuna-dashboard's own WSGI app (wsgiref, in a thread,
as `hpsearch dashboard` serves it), read over HTTP with urllib, through a reader: `write-through`
(what `hpsearch dashboard` serves: hpsearch's WriteThroughStorage) or `rdb` (Optuna's plain
RDBStorage, with hpsearch's settings); `--readers write-through rdb` serves the one storage
through both, side by side. `--requests` loads of each kind, medians, interleaved between the
columns: the first load (a storage and an app opened just before: a study page opened on a
dashboard just started), a load after the dashboard's trial cache expired (the storage as the
earlier loads left it: a page polled after the cache's 10 s; the write-through storage then
reads only what changed), and loads with the cache warm (serialization only). The sizes: each
part's JSON in the response, per trial and in all; and what the storage holds per trial (its
user attrs, untruncated: the dashboard cuts a JSON attr at 1,024 characters, a storage read
does not).
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

from hpsearch.storage.urls import close_storage, open_storage

# The parts of a serialized trial that get their own line; the rest is "trial: other".
TRIAL_PARTS = ("params", "intermediate_values", "user_attrs")


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


READERS = ("write-through", "rdb")

# The loads measured: (kind, what the report calls it).
LOADS = (("first", "load, first (median s)"), ("expired", "load, cache expired (median s)"),
         ("warm", "load, cache warm (median s)"))


def open_reader(url: str, reader: str) -> optuna.storages.BaseStorage:
    storage = open_storage(url, write_behind=False)
    return storage if reader == "write-through" else storage._backend


class Served:
    """One storage served by optuna-dashboard's app on a free port, in a thread."""

    def __init__(self, url: str, study: str, reader: str):
        self.url, self.reader = url, reader
        self.storage = open_reader(url, reader)
        self.study_id = self.storage.get_study_id_from_name(study)
        self.app = optuna_dashboard.wsgi(self.storage)
        self.server: WSGIServer = make_server("127.0.0.1", 0, self.app, handler_class=_Quiet)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.address = (f"http://127.0.0.1:{self.server.server_address[1]}"
                        f"/api/studies/{self.study_id}?after=0")

    def load(self, kind: str) -> tuple[float, bytes]:
        if kind == "first":  # a new storage and app: nothing read yet
            close_storage(self.storage)
            self.storage = open_reader(self.url, self.reader)
            self.app = optuna_dashboard.wsgi(self.storage)
            self.server.set_app(self.app)
        cache = self.app._inmemory_cache
        if kind == "expired":
            cache.clear()
        elif kind == "warm":  # its trials as fresh as they were just read: serialization only
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
    parser.add_argument("--readers", nargs="+", choices=READERS, default=[READERS[0]],
                        help="how the dashboard reads the storage: write-through (hpsearch "
                             "dashboard's), rdb (Optuna's RDBStorage); two: side by side")
    parser.add_argument("--requests", type=int, default=5)
    args = parser.parse_args()
    if len(args.readers) > 2 or (args.compare and len(args.readers) > 1):
        parser.error("--readers takes two readers of one storage, or one with --compare")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.build:
        build(args.storage, args.study, args.build)
    if args.compare:
        columns = list(zip(args.labels, (args.storage, args.compare), args.readers * 2,
                           strict=True))
    else:
        columns = [(reader, args.storage, reader) for reader in args.readers]
    labels = [label for label, _, _ in columns]
    served = [Served(url, args.study, reader) for _, url, reader in columns]
    try:
        times: dict[str, dict[str, list[float]]] = {
            kind: {label: [] for label in labels} for kind, _ in LOADS}
        bodies: dict[str, bytes] = {}
        for kind, _ in LOADS:
            # Interleaved: a busy moment slows every column alike.
            for _ in range(args.requests):
                for label, one in zip(labels, served, strict=True):
                    seconds, bodies[label] = one.load(kind)
                    times[kind][label].append(seconds)
        held = {label: stored_attrs(one) for label, one in zip(labels, served, strict=True)}
    finally:
        for one in served:
            one.close()
    report(labels, bodies, times, held)


def report(labels: list[str], bodies: dict[str, bytes], times: dict[str, dict[str, list[float]]],
           held: dict[str, Counter]) -> None:
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
    for kind, name in LOADS:
        row(name, [statistics.median(times[kind][label]) for label in labels], ".3f")
    print("\nresponse by part, bytes a trial (study-level parts: their bytes / trials)")
    for name in names:
        row(name, [parts[label].get(name, 0) / counts[label] for label in labels], ".0f")
    print("\nstored user attrs (untruncated JSON), bytes a trial")
    keys = sorted(set().union(*held.values()), key=lambda k: -held[labels[0]].get(k, 0))
    for key in keys:
        row(key, [held[label].get(key, 0) / counts[label] for label in labels], ".0f")


if __name__ == "__main__":
    main()
