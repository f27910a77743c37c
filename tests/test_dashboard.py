"""The dashboard on real studies: optuna-dashboard's JSON API served by `start_dashboard` on a
real SQLite file, the note and figures hpsearch registers, a search running while the
dashboard polls it, and the one-line errors of `hpsearch dashboard`."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

import optuna
import optuna_dashboard
import pytest
from click.testing import CliRunner

from hpsearch import refresh_helper
from hpsearch.cli import cli
from hpsearch.dashboard import (
    FIGURE_LOSS_BY_OPTIMIZER,
    FIGURE_LOSS_BY_SCHEDULER,
    FIGURE_LOSS_CURVES,
    FIGURE_LR_CURVES,
    KEEP_LINE,
    DashboardServer,
    _load_alone,
    _note_and_figure_modules,
    refresh_dashboard,
    refresh_studies,
    start_dashboard,
    study_figures,
)
from hpsearch.plots import plot_lr_curves
from hpsearch.records import ATTR_LR_CURVE, count_trials
from hpsearch.report import curves_frame, markdown_table, summary, trials_frame
from hpsearch.search.run import run_search
from hpsearch.storage.urls import open_storage
from hpsearch.studies import load_stored_study, stored_config

FIGURES = {FIGURE_LR_CURVES, FIGURE_LOSS_CURVES, FIGURE_LOSS_BY_SCHEDULER,
           FIGURE_LOSS_BY_OPTIMIZER}
HPSEARCH = [sys.executable, "-c", "from hpsearch.cli import main; main()"]


@pytest.fixture
def study_copy(small_study: tuple[str, str], tmp_path: Path) -> tuple[str, str]:
    """A private copy of the shared small study (the dashboard writes notes into it)."""
    url, name = small_study
    target = tmp_path / "copy.db"
    with sqlite3.connect(url.removeprefix("sqlite:///")) as source, \
            sqlite3.connect(target) as copy:
        source.backup(copy)
    return f"sqlite:///{target}", name


@pytest.fixture
def serve() -> Iterator:
    """serve(server): run a started dashboard in a thread, stopped after the test."""
    servers: list[DashboardServer] = []

    def run(server: DashboardServer) -> DashboardServer:
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    yield run
    for server in servers:
        server.close()


def get_json(server: DashboardServer, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=30) as reply:
        assert reply.status == 200
        return json.load(reply)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_dashboard_json_has_the_study_its_trials_note_and_figures(study_copy, serve):
    url, name = study_copy
    server = serve(start_dashboard(url, name, port=0))
    assert server.refreshed == [name]
    assert server.url == f"http://127.0.0.1:{server.port}/dashboard/studies/{server.study_id}"
    assert not server.is_public

    listed = get_json(server, "/api/studies")["study_summaries"]
    assert [(s["study_name"], s["study_id"]) for s in listed] == [(name, server.study_id)]
    detail = get_json(server, f"/api/studies/{server.study_id}")
    study = load_stored_study(name, url)
    trials = study.get_trials()
    assert len(detail["trials"]) == len(trials) == 16

    note = detail["note"]["body"]
    frame = trials_frame(trials)
    assert note.startswith(f"## hpsearch study `{name}`\n")
    counts = count_trials(trials)
    assert (f"| Trials | 16 finished: {counts.complete} complete, {counts.pruned} pruned, "
            f"{counts.diverged} diverged (0 failed, 0 running) |") in note
    assert "| Schedulers (9) | none, step, multistep, exponential, cosine, plateau, lambda, " \
           "onecycle, cosine_restarts |" in note
    assert "| Pruner | median: startup trials 3, warmup epochs 3 |" in note
    assert f"### Which schedule wins\n\n{markdown_table(summary(frame, by='scheduler'))}\n" \
        in note
    assert f"### Which optimizer wins\n\n{markdown_table(summary(frame, by='optimizer'))}\n" \
        in note
    assert note.endswith(f"{KEEP_LINE}\n")

    figures = {g["id"]: json.loads(g["graph_object"]) for g in detail["plotly_graph_objects"]}
    assert set(figures) == FIGURES
    # The lr curves are the best complete trial of each scheduler, their stored lr per epoch.
    best = summary(frame, by="scheduler").dropna(subset=["best_trial"])
    lines = figures[FIGURE_LR_CURVES]["data"]
    assert [line["name"] for line in lines] == [
        f"{row.scheduler} (#{row.best_trial}, {row.optimizer})" for row in best.itertuples()]
    for line, number in zip(lines, best["best_trial"], strict=True):
        assert list(line["y"]) == pytest.approx(trials[number].user_attrs[ATTR_LR_CURVE])
        assert list(line["x"]) == list(range(1, 13))
    boxes = figures[FIGURE_LOSS_BY_SCHEDULER]["data"]
    assert sum(len(box["y"]) for box in boxes) == counts.complete
    assert {box["name"] for box in boxes} == set(frame.loc[frame["state"] == "complete",
                                                           "scheduler"])
    # Trial user attrs reach the trial view as they are stored, each lr curve whole.
    for shown, trial in zip(detail["trials"], trials, strict=True):
        attrs = {a["key"]: a["value"] for a in shown["user_attrs"]}
        assert json.loads(attrs[ATTR_LR_CURVE]) == trial.user_attrs[ATTR_LR_CURVE]
        assert attrs["end_reason"] == trial.user_attrs["end_reason"]


def test_a_study_stored_with_full_precision_lr_curves_still_reports_and_plots(
        study_copy, serve, tmp_path):
    """Studies whose lr curves hold full floats (written before curves kept 4 significant
    digits) are read as they are: the figures, the curves frame, the PNG plot."""
    url, name = study_copy
    study = load_stored_study(name, url)
    trials = study.get_trials()
    best = summary(trials_frame(trials), by="scheduler").dropna(subset=["best_trial"])
    numbers = [int(n) for n in best["best_trial"]]
    full = {n: [trials[n].params["lr"] * 0.9 ** e
                for e in range(trials[n].user_attrs["epochs_run"])] for n in numbers}
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        for number, curve in full.items():
            db.execute("UPDATE trial_user_attributes SET value_json = ? "
                       "WHERE key = ? AND trial_id = ?",
                       (json.dumps(curve), ATTR_LR_CURVE, trials[number]._trial_id))
    study = load_stored_study(name, url)
    curves = curves_frame(study, numbers)
    for number, curve in full.items():
        assert curves.loc[curves["number"] == number, "lr"].tolist() == curve
    plotted = plot_lr_curves(trials_frame(study), curves, tmp_path / "lr.png")
    assert [list(line.get_ydata()) for line in plotted.axes[0].lines] == [
        full[n] for n in numbers]
    assert (tmp_path / "lr.png").stat().st_size > 0

    server = serve(start_dashboard(url, name, port=0))  # which refreshes the figures
    detail = get_json(server, f"/api/studies/{server.study_id}")
    figures = {g["id"]: json.loads(g["graph_object"]) for g in detail["plotly_graph_objects"]}
    lines = figures[FIGURE_LR_CURVES]["data"]
    assert [list(line["y"]) for line in lines] == [full[n] for n in numbers]


def test_refresh_keeps_what_a_person_wrote_and_an_unchanged_note(study_copy):
    url, name = study_copy
    study = load_stored_study(name, url)
    optuna_dashboard.save_note(study, "my own remarks")
    refresh_dashboard(study)
    note = optuna_dashboard.get_note(study)
    assert note.startswith("## hpsearch study") and note.endswith(f"{KEEP_LINE}\nmy own remarks")

    optuna_dashboard.save_note(study, note + "\nand more")
    version = study._storage.get_study_system_attrs(study._study_id)["dashboard:note_ver"]
    refresh_dashboard(study)
    assert optuna_dashboard.get_note(study) == note + "\nand more"
    # Nothing changed: the note keeps its version (an open editor sees no conflict).
    assert study._storage.get_study_system_attrs(study._study_id)["dashboard:note_ver"] == version


def test_only_hpsearch_studies_are_refreshed(study_copy):
    url, name = study_copy
    optuna.create_study(study_name="plain", storage=open_storage(url))
    assert refresh_studies(url) == [name]
    plain = load_stored_study("plain", url)
    assert optuna_dashboard.get_note(plain) == ""
    result = CliRunner().invoke(cli, ["dashboard", "--storage", url, "--study", "plain",
                                      "--refresh"])
    assert result.exit_code == 1
    assert result.output == "Error: study 'plain' was not created by hpsearch\n"
    result = CliRunner().invoke(cli, ["dashboard", "--storage", url, "--refresh"])
    assert result.exit_code == 0
    assert result.output == f"Refreshed the notes and figures of {name} in {url}.\n"


def test_a_search_runs_to_the_end_while_the_dashboard_polls_and_refreshes(
        write_study, tmp_path, serve):
    """SQLite in WAL mode: the dashboard reads (every few ms here) and writes (note, figures)
    while another process runs the search; neither side sees 'database is locked'."""
    # Trials of a few hundred ms, so that the search lasts several of the dashboard's 2-second
    # cache periods while it polls.
    study_file = write_study("live", text=write_study("live").read_text().replace(
        "epochs = 12", "epochs = 600"))
    url = f"sqlite:///{tmp_path / 'live.db'}"
    first = CliRunner().invoke(cli, ["optimize", "--study", str(study_file), "--trials", "2",
                                     "--storage", url, "--quiet"])
    assert first.exit_code == 0, first.output
    server = serve(start_dashboard(url, "live", port=0))
    search = subprocess.Popen(
        [*HPSEARCH, "optimize", "--study", str(study_file), "--trials", "24", "--storage", url,
         # One trial at a time, so that trials arrive one by one while the dashboard polls.
         "--engine", "reference", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    study = load_stored_study("live", url)
    polls = 0
    while search.poll() is None:
        detail = get_json(server, f"/api/studies/{server.study_id}")
        seen.append(len(detail["trials"]))
        polls += 1
        if polls % 10 == 0:
            refresh_dashboard(study)
        time.sleep(0.02)
    out, err = search.communicate()
    assert search.returncode == 0, err
    assert "locked" not in err + out
    assert "24 of 24 finished trials" in out

    time.sleep(2.1)  # optuna-dashboard serves a study's trials from its cache for 2 s
    final = get_json(server, f"/api/studies/{server.study_id}")
    assert [t["state"] for t in final["trials"]].count("Running") == 0
    assert len(final["trials"]) == 24
    assert seen == sorted(seen)
    # Trials seen arriving while the search ran (how many at a time depends on the
    # machine's speed and the dashboard's cache).
    assert any(2 < count < 24 for count in seen), \
        f"the dashboard did not see the trials arrive: {seen}"
    refresh_dashboard(study)
    assert "| Trials | 24 finished:" in optuna_dashboard.get_note(study)


def test_a_search_in_a_fresh_process_writes_the_note_and_figures_the_dashboard_reads(
        write_study, tmp_path):
    """The search's refresh helper loads optuna-dashboard's note and figure code on its own
    (without the package's web app): what it writes is what the dashboard's public API and its
    app read."""
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    subprocess.run([*HPSEARCH, "optimize", "--study", str(write_study()), "--trials", "4",
                    "--storage", url, "--quiet"], check=True, capture_output=True, timeout=300)
    # The command ends without the interpreter's teardown, its storage closed first: SQLite
    # has folded its write-ahead log into the file, as at a normal exit.
    assert sorted(path.name for path in tmp_path.glob("fresh.db*")) == ["fresh.db"]
    study = load_stored_study("small", url)
    note = optuna_dashboard.get_note(study)
    assert note.startswith("## hpsearch study `small`\n") and note.endswith(f"{KEEP_LINE}\n")
    assert "| Trials | 4 finished:" in note

    app = optuna_dashboard.wsgi(open_storage(url, write_behind=False))
    server = make_server("127.0.0.1", 0, app, handler_class=_Silent)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        address = f"http://127.0.0.1:{server.server_address[1]}/api/studies/{study._study_id}"
        with urllib.request.urlopen(address, timeout=30) as reply:
            detail = json.load(reply)
    finally:
        server.shutdown()
        server.server_close()
    assert detail["note"]["body"] == note
    trials = study.get_trials()
    expected = study_figures(trials, trials_frame(trials))
    served = {g["id"]: json.loads(g["graph_object"]) for g in detail["plotly_graph_objects"]}
    assert served == {key: json.loads(figure.to_json()) for key, figure in expected.items()}


def test_the_note_and_figure_code_is_optuna_dashboards_own_loaded_alone_or_imported():
    notes, figures = _load_alone("_note"), _load_alone("_custom_plot_data")
    for loaded, public in ((notes.save_note, optuna_dashboard.save_note),
                           (notes.get_note, optuna_dashboard.get_note),
                           (figures.save_plotly_graph_object,
                            optuna_dashboard.save_plotly_graph_object)):
        assert loaded is not public
        assert loaded.__code__.co_filename == public.__code__.co_filename
        assert loaded.__code__.co_code == public.__code__.co_code
    assert sys.modules["optuna_dashboard._note"] is not notes  # the package's stays its own
    # Here the package is imported already: its public functions are used.
    assert _note_and_figure_modules.__wrapped__() == (optuna_dashboard, optuna_dashboard)


class _Silent(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def test_the_command_prints_the_url_serves_it_and_stops_on_ctrl_c(study_copy):
    url, name = study_copy
    process = subprocess.Popen([*HPSEARCH, "dashboard", "--storage", url, "--study", name,
                                "--port", "0"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline() == \
            f"optuna-dashboard on {url}; notes and figures refreshed: {name}\n"
        opened = process.stdout.readline()
        assert opened.startswith("Open http://127.0.0.1:") and \
            opened.endswith("/dashboard/studies/1  (Ctrl-C to stop)\n")
        page = opened.split()[1]
        with urllib.request.urlopen(page, timeout=30) as reply:
            assert reply.status == 200 and b"<html" in reply.read().lower()
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0
    assert out == "Dashboard stopped.\n"
    assert err == ""


def test_another_interface_warns_that_there_is_no_authentication(study_copy):
    url, _ = study_copy
    process = subprocess.Popen([*HPSEARCH, "dashboard", "--storage", url, "--host", "0.0.0.0",
                                "--port", "0"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        warning = process.stderr.readline()
        opened = [process.stdout.readline(), process.stdout.readline()]
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)
    assert warning.startswith("Warning: listening on 0.0.0.0: anyone who can reach port ")
    assert warning.endswith("of this machine can open the dashboard. It has no "
                            "authentication and can modify and delete studies.\n")
    assert f"http://{socket.gethostname()}:" in "".join(opened)


def run_dashboard(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["dashboard", *args])
    return result.exit_code, result.output


def test_a_port_in_use_is_one_line(study_copy):
    url, _ = study_copy
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert run_dashboard("--storage", url, "--port", str(port)) == (
            1, f"Error: port {port} on 127.0.0.1 is already in use; choose another with --port\n")


def test_an_unknown_study_lists_the_studies(study_copy):
    url, name = study_copy
    assert run_dashboard("--storage", url, "--study", "nope", "--port", str(free_port())) == (
        1, f"Error: no study 'nope' in {url}; it has: {name}\n")


@pytest.mark.parametrize("refresh", [[], ["--refresh"]])
def test_storages_without_studies_are_one_line(tmp_path, refresh):
    missing = tmp_path / "missing.db"
    assert run_dashboard("--storage", f"sqlite:///{missing}", *refresh) == (
        1, f"Error: cannot open storage sqlite:///{missing}: no such file\n")
    assert not missing.exists()
    assert run_dashboard("--storage", f"sqlite:///{tmp_path}", *refresh) == (
        1, f"Error: cannot open storage sqlite:///{tmp_path}: is a folder, not a database "
           "file\n")

    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    open_storage(empty)
    assert run_dashboard("--storage", empty, *refresh) == (
        1, f"Error: no studies in {empty}; run `hpsearch optimize` on it first\n")

    other = tmp_path / "other.db"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE things (id INTEGER)")
    assert run_dashboard("--storage", f"sqlite:///{other}", *refresh) == (
        1, f"Error: cannot open storage sqlite:///{other}: it is not an Optuna storage (it "
           "has no studies table)\n")
    with sqlite3.connect(other) as connection:
        assert [r[0] for r in connection.execute("SELECT name FROM sqlite_master")] == ["things"]

    garbage = tmp_path / "garbage.db"
    garbage.write_text("not a database, just text that is long enough to be read" * 20)
    assert run_dashboard("--storage", f"sqlite:///{garbage}", *refresh) == (
        1, f"Error: cannot open storage sqlite:///{garbage}: file is not a database\n")


def test_unreachable_and_unknown_storages_are_one_line():
    code, output = run_dashboard("--storage", "nosuchdb://somewhere/db")
    assert (code, output) == (1, "Error: storage nosuchdb://somewhere/db: unknown database "
                                 "kind 'nosuchdb'\n")
    # A closed port: the driver's own reason, the password masked, on one line.
    code, output = run_dashboard("--storage", "postgresql+psycopg://me:secret@127.0.0.1:1/db")
    assert code == 1
    assert output.startswith("Error: cannot open storage postgresql+psycopg://me:***@127.0.0.1"
                             ":1/db: ")
    assert output.count("\n") == 1 and "secret" not in output


@pytest.fixture
def helper_refresh(study_copy, monkeypatch) -> Iterator[tuple[str, str, optuna.Study]]:
    """(url, name, study) of a private study copy whose note and figures were refreshed in
    this process and then erased; `Refresh.start` starts its helper here (this process has
    refreshed a dashboard already, and would refresh by itself)."""
    url, name = study_copy
    study = load_stored_study(name, url)
    refresh_dashboard(study)
    expected = _dashboard_state(study)
    optuna_dashboard.save_note(study, "")
    storage = study._storage
    for key in storage.get_study_system_attrs(study._study_id):
        if key.startswith("dashboard:plot_data:"):
            storage.set_study_system_attr(study._study_id, key, "")
    assert _dashboard_state(study) != expected
    monkeypatch.setattr(refresh_helper, "_refreshed_before", lambda: False)
    yield url, name, expected


def _dashboard_state(study: optuna.Study) -> tuple[str, dict[str, str]]:
    """A study's note and figures as the dashboard reads them."""
    attrs = study._storage.get_study_system_attrs(study._study_id)
    figures = optuna_dashboard._custom_plot_data.get_plotly_graph_objects(attrs)
    return optuna_dashboard.get_note(study), {key: value for key, value in figures.items()
                                              if value}


def test_the_refresh_helper_writes_the_note_and_figures_the_search_would(helper_refresh):
    url, name, expected = helper_refresh
    refresh = refresh_helper.Refresh(url, name)
    refresh.start()
    helper = refresh._helper
    assert helper is not None
    refresh.finish(load_stored_study(name, url))
    assert helper.returncode == 0  # the helper refreshed: this process did not
    assert _dashboard_state(load_stored_study(name, url)) == expected


def test_the_helper_writes_the_trials_the_search_ended_after_it_prepared(helper_refresh):
    """The helper computes the note once early; the note it writes at the end has every
    trial, as a refresh in this process then finds (it leaves the note unchanged)."""
    url, name, _ = helper_refresh
    study = load_stored_study(name, url)

    def search_ends() -> bool:  # the search runs two more trials, then tells the helper
        run_search(stored_config(study), url, 18, engine="reference")
        return True

    refresh_helper.prepared_refresh(study, told=search_ends)
    written = _dashboard_state(load_stored_study(name, url))
    assert "| Trials | 18 finished:" in written[0]
    refresh_dashboard(load_stored_study(name, url))
    assert _dashboard_state(load_stored_study(name, url)) == written


def test_a_failed_helper_leaves_the_refresh_to_the_search(helper_refresh, monkeypatch):
    url, name, expected = helper_refresh
    monkeypatch.setattr(refresh_helper, "_HELPER_CODE", "import sys; sys.exit(3)")
    refresh = refresh_helper.Refresh(url, name)
    refresh.start()
    helper = refresh._helper
    assert helper is not None
    refresh.finish(load_stored_study(name, url))
    assert helper.returncode == 3
    assert _dashboard_state(load_stored_study(name, url)) == expected


def test_a_helper_writes_nothing_when_the_search_ends_otherwise(helper_refresh):
    """Closed (the search failed or was interrupted), or its stdin closed (the search's
    process is gone), the helper ends without touching the study."""
    url, name, _ = helper_refresh
    erased = _dashboard_state(load_stored_study(name, url))
    refresh = refresh_helper.Refresh(url, name)
    refresh.start()
    helper = refresh._helper
    refresh.close()
    assert helper.returncode is not None
    refresh.start()
    helper = refresh._helper
    helper.stdin.close()
    assert helper.wait(timeout=300) == 0
    assert _dashboard_state(load_stored_study(name, url)) == erased


def test_a_search_refreshes_in_its_own_process_where_it_has_before_or_in_memory(
        tmp_path, monkeypatch):
    """This process has imported what a refresh needs (it imported hpsearch.dashboard), or
    the study lives in its memory only: no helper is started."""
    refresh = refresh_helper.Refresh(f"sqlite:///{tmp_path / 'x.db'}", "small")
    refresh.start()
    assert refresh._helper is None
    monkeypatch.setattr(refresh_helper, "_refreshed_before", lambda: False)
    in_memory = refresh_helper.Refresh("memory", "small")
    in_memory.start()
    assert in_memory._helper is None
