"""optuna-dashboard on hpsearch's storage, and what makes an hpsearch study explain itself there.

`start_dashboard` serves optuna-dashboard's own WSGI app on the storage hpsearch uses, opened with
hpsearch's settings (SQLite in WAL mode with a busy timeout, so that the dashboard polling the
file never fails a running search, nor the search the dashboard) as a `WriteThroughStorage`:
every read sees every commit (a running search live), every write (a note, a figure, an edit
in the browser) goes straight to the database, and trials are read with hpsearch's plain
queries, each finished trial once. `refresh_dashboard` writes a
study's note (its config and the "which schedule wins" tables) and its figures (learning-rate
and validation-loss curves of the best trial per scheduler, final validation loss by scheduler
and by optimizer) with the dashboard's own note and custom-plot API, so plain `optuna-dashboard`
shows them too.
"""

from __future__ import annotations

import errno
import functools
import importlib.util
import ipaddress
import logging
import socket
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from socketserver import ThreadingMixIn
from types import ModuleType
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import optuna
import pandas as pd
import plotly.graph_objects as go
from optuna.trial import FrozenTrial

import hpsearch
from hpsearch.config import StudyConfig
from hpsearch.confirm_stats import Analysis, search_and_confirmation
from hpsearch.errors import ConfigError, StorageError
from hpsearch.records import ATTR_CONFIG, DIVERGED
from hpsearch.report import (
    COMPLETE,
    FAILED,
    PRUNED,
    RUNNING,
    STATES,
    curves_frame,
    markdown_table,
    summary,
    trials_frame,
    verdict,
)
from hpsearch.storage.urls import mask_url, open_storage
from hpsearch.studies import load_stored_study, stored_config

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080

# The note's hpsearch part ends with this line; what a person writes below it in the dashboard
# survives every refresh.
KEEP_LINE = "*Notes written below this line are kept when hpsearch refreshes this note.*"

# Fixed ids, so that a refresh replaces the figures instead of adding copies.
FIGURE_LR_CURVES = "hpsearch-lr-curves"
FIGURE_LOSS_CURVES = "hpsearch-val-loss-curves"
FIGURE_LOSS_BY_SCHEDULER = "hpsearch-val-loss-by-scheduler"
FIGURE_LOSS_BY_OPTIMIZER = "hpsearch-val-loss-by-optimizer"

# A figure's y axis stops at HEADROOM x the QUANTILE of its values when its largest value is
# more than FACTOR times that quantile (and it has at least MIN_POINTS values).
OUTLIER_QUANTILE = 0.9
OUTLIER_HEADROOM = 1.5
OUTLIER_FACTOR = 5.0
OUTLIER_MIN_POINTS = 8

# The pruner settings that mean something for each kind, in the order the note shows them.
PRUNER_SETTINGS = {
    "median": ("startup_trials", "warmup_epochs"),
    "percentile": ("percentile", "startup_trials", "warmup_epochs"),
    "patient": ("patience", "startup_trials", "warmup_epochs"),
    "successive_halving": ("min_epochs", "reduction_factor"),
    "hyperband": ("min_epochs", "reduction_factor"),
    "paired": ("p_threshold", "startup_trials", "warmup_epochs"),
    "none": (),
}


def refresh_dashboard(study: optuna.Study) -> None:
    """Rewrite an hpsearch study's note and figures from its trials as they are now."""
    notes, figures = _note_and_figure_modules()
    previous = notes.get_note(study)
    body, drawn = _note_and_figures(study, previous)
    # An unchanged note keeps its version: a person editing it in the browser meanwhile is not
    # told that it changed under them.
    if body != previous:
        notes.save_note(study, body)
    for figure_id, figure in drawn.items():
        figures.save_plotly_graph_object(study, figure, graph_object_id=figure_id)


def _note_and_figures(study: optuna.Study, previous: str) -> tuple[str, dict[str, go.Figure]]:
    """The note (keeping what a person wrote in `previous`) and figures of `study` now."""
    from hpsearch.confirm import load_confirmation

    config = stored_config(study)
    trials = study.get_trials(deepcopy=False)
    frame = trials_frame(trials)
    summaries = {by: summary(frame, by=by) for by in ("scheduler", "optimizer")}
    body = study_note(study.study_name, config, frame, load_confirmation(study),
                      summaries) + kept_notes(previous)
    return body, study_figures(trials, frame, summaries["scheduler"])


def prepare_refresh(study: optuna.Study) -> None:
    """Pay now what the first `refresh_dashboard` of `study` in a process pays before its
    work: SciPy's statistics (its paired comparisons) imported; plotly's trace and layout
    classes with their validators, which plotly imports as a figure first uses them (one tiny
    figure of each kind, drawn and encoded as a refresh does, and thrown away: the study may
    have no complete trial yet); and the study's note and figures computed from its trials so
    far and thrown away (the first queries and table operations of a process are its
    slowest)."""
    import scipy.stats  # noqa: F401

    _note_and_figure_modules()
    curve = pd.DataFrame({"number": [0, 0], "epoch": [1, 2], "lr": [1.0, 0.5]})
    _curves(curve, {0: "curve"}, "lr", "curves", "lr", log=True).to_json()
    values = [1.0] * 9 + [100.0]  # one far above the rest: the axis is cut
    boxes = pd.DataFrame({"state": COMPLETE, "value": values, "number": range(len(values)),
                          "scheduler": "scheduler"})
    _final_loss_by(boxes, "scheduler").to_json()
    _, drawn = _note_and_figures(study, "")
    for figure in drawn.values():
        figure.to_json()


@functools.cache
def _note_and_figure_modules() -> tuple[Any, Any]:
    """optuna-dashboard's code that reads and writes a note (`get_note`, `save_note`) and a
    figure (`save_plotly_graph_object`) in its own format: its `_note` and `_custom_plot_data`
    modules, which import only Optuna. Its package imports its whole web app first, and the
    app imports scikit-learn (for Optuna's fANOVA importances), which a search never needs:
    where the package is not imported yet, the two modules are loaded from its files on their
    own. The package's public functions (the same ones) on any failure."""
    if "optuna_dashboard" not in sys.modules:
        try:
            notes, figures = _load_alone("_note"), _load_alone("_custom_plot_data")
            for module, name in ((notes, "get_note"), (notes, "save_note"),
                                 (figures, "save_plotly_graph_object")):
                if not callable(getattr(module, name, None)):
                    raise AttributeError(f"{module.__name__} has no {name}")
            return notes, figures
        except Exception:
            logger.debug("optuna-dashboard's note and figure modules did not load on their "
                         "own; importing the package", exc_info=True)
    import optuna_dashboard

    return optuna_dashboard, optuna_dashboard


def _load_alone(name: str) -> ModuleType:
    """optuna-dashboard's module `name`, executed without its package (and kept out of
    sys.modules, so that a later import of the package gets its own)."""
    package = importlib.util.find_spec("optuna_dashboard")  # finds it, executes nothing
    if package is None or not package.submodule_search_locations:
        raise ImportError("optuna_dashboard is not installed as a package")
    path = Path(next(iter(package.submodule_search_locations))) / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{__name__}.optuna_dashboard{name}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def refresh_studies(storage_url: str, study_name: str | None = None) -> list[str]:
    """Refresh the note and figures of one study, or of every hpsearch study in the storage
    (studies made without hpsearch are left alone). Returns the names refreshed."""
    storage = _open_existing_storage(storage_url)
    names = [study_name] if study_name else _hpsearch_study_names(storage)
    _refresh_each(storage_url, names)
    return names


def _refresh_each(storage_url: str, names: Iterable[str]) -> None:
    for name in names:
        refresh_dashboard(load_stored_study(name, storage_url))


def study_note(study_name: str, config: StudyConfig, frame: pd.DataFrame,
               confirmation: Analysis | None = None,
               summaries: Mapping[str, pd.DataFrame] | None = None) -> str:
    """The hpsearch part of a study's note (markdown), ending with KEEP_LINE; `frame` is the
    study's `trials_frame`; with its `confirmation`, the note leads with its verdict.
    `summaries`: the frame's `summary` by scheduler and by optimizer, where the caller has
    them already."""
    summaries = summaries or {by: summary(frame, by=by) for by in ("scheduler", "optimizer")}
    counts = {state: int((frame["state"] == state).sum()) for state in STATES}
    finished = counts[COMPLETE] + counts[PRUNED] + counts[DIVERGED]
    settings = [
        ("Dataset", _dataset_line(config)),
        ("Model", _with_options(f"`{config.model.kind}`", config.model.options)),
        ("Training", f"{config.training.epochs} epochs, "
                     + (f"batches of {config.training.batch_size}" if config.training.batch_size
                        else "full batch")),
        (f"Optimizers ({len(config.space.optimizers)})", ", ".join(config.space.optimizers)),
        (f"Schedulers ({len(config.space.schedulers)})", ", ".join(config.space.schedulers)),
        ("Sampler", f"{config.sampler.kind}, {config.sampler.startup_trials} startup trials, "
                    f"seed {config.seed}"),
        ("Pruner", _pruner_line(config)),
        ("Objective", "validation loss at the last epoch (minimize)"),
        ("Evaluation", config.evaluation.describe()),
        ("Trials", f"{finished} finished: " + ", ".join(
            f"{counts[state]} {state}" for state in (COMPLETE, PRUNED, DIVERGED))
         + f" ({counts[FAILED]} failed, {counts[RUNNING]} running)"),
    ]
    overrides = config.search.get("params") or {}
    if overrides:
        settings.insert(5, ("Space overrides", "; ".join(
            _with_options(f"`{name}`", value if isinstance(value, Mapping) else {"=": value})
            for name, value in overrides.items())))
    lines = [f"## hpsearch study `{study_name}`", ""]
    if config.description:
        lines += [config.description, ""]
    if confirmation is not None:
        lead = search_and_confirmation(confirmation, frame)
        lines += ["### Confirmed verdict", "", f"{confirmation.verdict} {lead}".strip(), ""]
    lines += ["| Setting | Value |", "|---|---|"]
    lines += [f"| {key} | {_cell(value)} |" for key, value in settings]
    lines += ["", verdict(frame, summaries)]
    for by, title in (("scheduler", "Which schedule wins"), ("optimizer", "Which optimizer wins")):
        lines += ["", f"### {title}", "", markdown_table(summaries[by])]
    lines += [
        "",
        f"Written by hpsearch {hpsearch.__version__} from {finished} finished trials; "
        f"`hpsearch dashboard --study {study_name} --refresh` rewrites it from the trials as "
        "they are now. Each trial's user attrs hold its learning-rate curve (`lr_curve`), "
        "validation accuracy, epochs run and why it ended (`end_reason`).",
        "",
        "---",
        "",
        KEEP_LINE,
        "",
    ]
    return "\n".join(lines)


def kept_notes(note: str) -> str:
    """What a person wrote below KEEP_LINE; all of a note that hpsearch never wrote."""
    _, found, after = note.partition(KEEP_LINE)
    return after.lstrip("\n") if found else note


def study_figures(trials: Sequence[FrozenTrial], frame: pd.DataFrame,
                  by_scheduler: pd.DataFrame | None = None) -> dict[str, go.Figure]:
    """hpsearch's figures of a study, by their dashboard id; `frame` is its `trials_frame`,
    `by_scheduler` its `summary` by scheduler where the caller has it already."""
    if by_scheduler is None:
        by_scheduler = summary(frame, by="scheduler")
    best = by_scheduler.dropna(subset=["best_trial"])
    curves = curves_frame(trials, numbers=[int(n) for n in best["best_trial"]])
    names = {int(row.best_trial): f"{row.scheduler} (#{row.best_trial}, {row.optimizer})"
             for row in best.itertuples()}
    return {
        FIGURE_LR_CURVES: _curves(
            curves, names, "lr", "Learning rate per epoch: the best trial of each scheduler",
            "learning rate", log=True),
        FIGURE_LOSS_CURVES: _curves(
            curves, names, "val_loss",
            "Validation loss per epoch: the best trial of each scheduler", "validation loss",
            # Linear: a validation loss can reach 0, which a log axis cannot show.
            log=False),
        FIGURE_LOSS_BY_SCHEDULER: _final_loss_by(frame, "scheduler"),
        FIGURE_LOSS_BY_OPTIMIZER: _final_loss_by(frame, "optimizer"),
    }


def _curves(curves: pd.DataFrame, names: Mapping[int, str], column: str, title: str,
            y_title: str, log: bool) -> go.Figure:
    """One line per trial in `names` (in its order: the best scheduler first).

    The figures take plain lists, not pandas columns: plotly encodes arrays as base64 typed
    arrays, which the plotly.js of older optuna-dashboard releases cannot read."""
    figure = go.Figure()
    for number, name in names.items():
        curve = curves[curves["number"] == number]
        figure.add_trace(go.Scatter(x=curve["epoch"].tolist(), y=curve[column].tolist(),
                                    mode="lines", name=name))
    figure.update_layout(xaxis_title="epoch", yaxis_title=y_title,
                         yaxis_type="log" if log else "linear",
                         legend={"title_text": "scheduler (best trial, optimizer)",
                                 "orientation": "h", "yanchor": "top", "y": -0.2})
    if not log:
        title += _clip_outliers(figure, curves[column])
    figure.update_layout(title=title)
    return figure


def _final_loss_by(frame: pd.DataFrame, column: str) -> go.Figure:
    """One box of the complete trials' validation losses per value of `column`, best median
    first, every trial a point (hover: its number)."""
    complete = frame[frame["state"] == COMPLETE]
    figure = go.Figure()
    for name in complete.groupby(column)["value"].median().sort_values(kind="stable").index:
        group = complete[complete[column] == name]
        figure.add_trace(go.Box(
            y=group["value"].tolist(), name=str(name), boxpoints="all", jitter=0.4,
            showlegend=False, text=[f"trial #{n}" for n in group["number"]],
        ))
    title = f"Final validation loss by {column} (complete trials)"
    figure.update_layout(title=title + _clip_outliers(figure, complete["value"]),
                         xaxis_title=column, yaxis_title="validation loss")
    return figure


def _clip_outliers(figure: go.Figure, values: pd.Series) -> str:
    """Cut the y axis above the bulk of the values when a few are far above it, so that one
    blown-up trial does not flatten the others; returns the note for the title. A log axis
    is no answer: a validation loss can be exactly 0."""
    values = values.dropna()
    if len(values) < OUTLIER_MIN_POINTS:
        return ""
    bulk = values.quantile(OUTLIER_QUANTILE)
    top = OUTLIER_HEADROOM * bulk
    above = int((values > top).sum())
    if bulk <= 0 or values.max() <= OUTLIER_FACTOR * bulk:
        return ""
    figure.update_yaxes(range=[min(0.0, float(values.min())), top])
    return f"<br><sup>{above} point{'s' if above > 1 else ''} above {top:.3g} cut off: " \
           "autoscale shows all</sup>"


def _dataset_line(config: StudyConfig) -> str:
    d = config.data
    text = (f"`{d.dataset}`: validation {d.valid_fraction:.0%}, test {d.test_fraction:.0%}, "
            f"split seed {d.split_seed}, {'scaled' if d.scale else 'not scaled'}")
    return _with_options(text, d.options)


def _pruner_line(config: StudyConfig) -> str:
    p = config.pruner
    names = PRUNER_SETTINGS.get(p.kind, ())
    settings = ", ".join(f"{name.replace('_', ' ')} {getattr(p, name):g}" for name in names)
    return f"{p.kind}: {settings}" if settings else p.kind


def _with_options(text: str, options: Mapping[str, Any]) -> str:
    shown = ", ".join(f"{key} {value}" if key != "=" else f"= {value}"
                      for key, value in options.items())
    return f"{text} ({shown})" if shown else text


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _hpsearch_study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    return sorted(s.study_name for s in storage.get_all_studies() if ATTR_CONFIG in s.user_attrs)


def _open_existing_storage(storage_url: str) -> optuna.storages.BaseStorage:
    """Open a storage that must already hold studies: a dashboard on a mistyped SQLite path
    must say so, not create an empty file (or Optuna's tables in somebody else's database)."""
    storage = open_storage(storage_url, write_behind=False, must_exist=True)
    if not storage.get_all_studies():
        raise StorageError(f"no studies in {mask_url(storage_url)}; run `hpsearch optimize` "
                           "on it first")
    return storage


class _Server(ThreadingMixIn, WSGIServer):
    # Threads per request, as optuna-dashboard's own server: a slow page load must not stall
    # the polling of another tab. Daemon threads: an open tab does not keep Ctrl-C waiting.
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        # The dashboard polls every few seconds: one line per request would flood the terminal.
        logger.debug("%s %s", self.address_string(), format % args)


@dataclass
class DashboardServer:
    """optuna-dashboard, bound and ready: `serve_forever()` serves it until Ctrl-C."""

    server: WSGIServer
    storage_url: str
    host: str
    study_id: int | None  # the study whose page `url` opens; None: the list of studies
    refreshed: list[str]  # the studies whose note and figures were rewritten on start

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def url(self) -> str:
        # A wildcard address listens everywhere but is no address to open: name this machine.
        host = socket.gethostname() if _is_wildcard(self.host) else self.host
        shown = f"[{host}]" if ":" in host else host
        page = f"/studies/{self.study_id}" if self.study_id is not None else ""
        return f"http://{shown}:{self.port}/dashboard{page}"

    @property
    def is_public(self) -> bool:
        """Whether the server listens beyond this machine (the dashboard has no login)."""
        return not ipaddress.ip_address(self.server.server_address[0]).is_loopback

    def serve_forever(self) -> None:
        try:
            self.server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            self.server.server_close()

    def close(self) -> None:
        """Stop a server that `serve_forever` runs in another thread."""
        self.server.shutdown()
        self.server.server_close()


def start_dashboard(storage_url: str, study_name: str | None = None, host: str = DEFAULT_HOST,
                    port: int = DEFAULT_PORT) -> DashboardServer:
    """Bind optuna-dashboard to host:port on the storage (port 0: any free port), after
    refreshing the notes and figures of its hpsearch studies (of `study_name` only, when
    given). Raises StorageError for a storage that does not exist,
    cannot be reached or holds no studies, or no study `study_name`; ConfigError for an
    address that cannot be bound (a port in use)."""
    storage = _open_existing_storage(storage_url)
    study_id = None
    names = _hpsearch_study_names(storage)
    if study_name is not None:
        load_stored_study(study_name, storage_url)  # or the list of the studies it has
        study_id = storage.get_study_id_from_name(study_name)
        names = [name for name in names if name == study_name]
    server = _bind(host, port)
    try:
        _refresh_each(storage_url, names)
        import optuna_dashboard  # its web app: only the server needs it

        server.set_app(optuna_dashboard.wsgi(storage))
    except BaseException:
        server.server_close()
        raise
    return DashboardServer(server, storage_url, host, study_id, names)


def _bind(host: str, port: int) -> WSGIServer:
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: unknown host ({exc.strerror})"
                          ) from None
    server_class = _Server6 if family == socket.AF_INET6 else _Server
    try:
        return server_class((host, port), _QuietHandler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} on {host} is already in use; choose another with "
                              "--port") from None
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def _is_wildcard(host: str) -> bool:
    return host in ("", "0.0.0.0", "::")
