"""The `hpsearch` command as a user runs it: outputs, exit codes and one-line errors."""

from __future__ import annotations

import contextlib
import re

import optuna
import pytest
from click.testing import CliRunner

from hpsearch.cli import cli


def run(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli, list(args), env=env)


@pytest.mark.parametrize("command", [[], *([name] for name in sorted(cli.commands))],
                         ids=lambda command: " ".join(["hpsearch", *command]))
def test_every_command_explains_itself_with_an_example(command):
    result = run(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "Example" in result.output
    example = result.output.split("Example", 1)[1]
    # An indented command line after "Example", running this command (the group: any of its).
    ran = re.findall(r"^ +hpsearch (\w+)", example, re.MULTILINE)
    if command:
        assert command[0] in ran, result.output
    else:
        assert ran and set(ran) <= set(cli.commands), result.output


@pytest.mark.parametrize(
    ("options", "engine_note"),
    [([], ", cohort engine, 32 trials at a time"),
     (["--engine", "reference"], ""),
     (["--engine", "cohort", "--cohort-size", "3"], ", cohort engine, 3 trials at a time")],
    ids=["auto", "reference", "cohort"])
def test_optimize_prints_best_trial_and_counts_then_resumes(write_study, tmp_path, options,
                                                            engine_note):
    path = write_study()
    url = f"sqlite:///{tmp_path / 's.db'}"
    result = run("optimize", "--study", str(path), "--trials", "6", "--storage", url, *options)
    assert result.exit_code == 0, result.output
    header, lines = result.output.splitlines()[:5], result.output.splitlines()[5:]
    # What is searched and what was inferred from the data, before the search.
    assert header == [
        f"Study 'small' in {url}: the target is 6 finished trials (0 finished so far).",
        "  wine: classification into 3 classes (0, 1, 2); loss: cross-entropy",
        "  rows: 106 train, 36 validation, 36 test (held out: the search never sees them)",
        "  inputs: 13 features (numeric), numbers standardized on each run's training rows",
        "  evaluation: 1 run per trial (one validation split, one seed)"]
    assert re.fullmatch(rf"Study 'small' in {re.escape(url)}: 6 of 6 finished trials \(ran 6 "
                        rf"trials in [\d.]+ s{engine_note}\)\.", lines[0]), lines[0]
    assert re.match(r"  complete \d, pruned \d, diverged 0, failed 0", lines[1])
    assert re.match(r"Best trial #\d+: validation loss [\d.]+, validation accuracy [\d.]+",
                    lines[2])
    assert any(line.split()[:1] == ["optimizer"] for line in lines[3:])
    assert any(line.split()[:1] == ["scheduler"] for line in lines[3:])
    again = run("optimize", "--study", str(path), "--trials", "8", "--storage", url, *options)
    assert again.exit_code == 0, again.output
    assert "8 of 8 finished trials (ran 2 trials in " in again.output
    assert again.output.splitlines()[0].endswith("(6 finished so far).")
    assert again.output.splitlines()[5].endswith(f"{engine_note}).")
    studies = run("studies", "--storage", url)
    assert studies.exit_code == 0
    row = studies.output.splitlines()[2].split()
    assert row[:2] == ["small", "8"]


def test_storage_comes_from_the_environment_when_not_given(write_study, tmp_path):
    url = f"sqlite:///{tmp_path / 'env.db'}"
    result = run("optimize", "--study", str(write_study()), "--trials", "2", "--quiet",
                 env={"HPSEARCH_STORAGE": url})
    assert result.exit_code == 0, result.output
    assert optuna.load_study(study_name="small", storage=url).trials


def test_train_reproduces_seed_004s_printout():
    result = run("train", "--study", "wine", "--set", "optimizer=adam", "--set", "lr=0.1",
                 "--set", "scheduler=plateau", "--every", "10")
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines()
            if re.match(r"\s+\d+0\s", line)]
    assert [int(r[0]) for r in rows] == list(range(10, 101, 10))
    lrs = [float(r[1]) for r in rows]
    assert lrs[0] == 0.1 and lrs == sorted(lrs, reverse=True) and lrs[-1] < 1e-4
    assert "plateau_patience  10" in result.output


def test_train_reproduces_seed_003s_linear_regression():
    result = run("train", "--study", "linreg", "--set", "scheduler=none", "--every", "100")
    assert result.exit_code == 0, result.output
    weights = re.search(r"Weights: \[(.*)\]", result.output).group(1)
    assert [float(w) for w in weights.split(",")] == pytest.approx([0, 2, 4, 6, 8], abs=0.03)
    final = result.output.splitlines()[-3].split()
    assert final[0] == "100" and float(final[2]) == pytest.approx(0.04, abs=0.006)


def test_train_trial_retrains_a_stored_trial(small_study):
    url, name = small_study
    best = optuna.load_study(study_name=name, storage=url).best_trial
    result = run("train", "--study", name, "--trial", str(best.number), "--storage", url,
                 "--every", "12")
    assert result.exit_code == 0, result.output
    assert f"Epoch 12: stored validation loss {best.value:.6g}, re-trained {best.value:.6g} " \
           "(identical)." in result.output


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["optimize", "--study", "wien"], "Error: study 'wien' is unknown; known: "),
        (["optimize", "--study", "wine", "--trials", "0"],
         "Error: --trials must be >= 1; got 0"),
        (["optimize", "--study", "wine", "--storage", "sqlite:////no/such/dir/x.db"],
         "Error: cannot open storage sqlite:////no/such/dir/x.db: folder /no/such/dir does "
         "not exist"),
        (["optimize", "--study", "wine", "--storage", "sqlite:////proc/x.db"],
         "Error: cannot open storage sqlite:////proc/x.db: unable to open database file"),
        (["optimize", "--study", "wine", "--engine", "cohort", "--cohort-size", "0"],
         "Error: --cohort-size must be >= 1; got 0"),
        (["optimize", "--study", "wine", "--storage", "not a url"],
         "Error: 'not a url' is not a storage URL; expected e.g. sqlite:///hpsearch.db"),
        (["train", "--study", "wine", "--set", "optimizer=adamm"],
         "Error: optimizer must be one of sgd, adam, adamw, nadam, radam, adamax, rmsprop, "
         "adagrad, adadelta; got 'adamm'"),
        (["train", "--study", "wine", "--set", "lr"], "Error: --set expects name=value; got 'lr'"),
        (["train", "--study", "wine", "--set", "optimizer=adam", "--set", "momentum=0.9"],
         "Error: parameter 'momentum' does not apply to optimizer 'adam' with scheduler 'none'"),
        (["train", "--study", "wine", "--set", "scheduler=onecycle",
          "--set", "onecycle_pct_start=0.01"],
         "Error: onecycle_pct_start 0.01 over 100 steps makes OneCycleLR rise for a single "
         "step, where torch divides by zero; use another onecycle_pct_start"),
        (["studies", "--storage", "mysql+nosuchdriver://u@h/db"],
         "Error: storage mysql+nosuchdriver://u@h/db: unknown database kind "
         "'mysql+nosuchdriver'"),
        (["studies", "--storage", "mssql+pyodbc://u:pw@h/db"],
         "Error: storage mssql+pyodbc://u:***@h/db: its database driver 'pyodbc' is not "
         "installed"),
        (["studies", "--storage", "postgresql+psycopg://u:secret@127.0.0.1:1/db"],
         "Error: cannot open storage postgresql+psycopg://u:***@127.0.0.1:1/db: connection "
         "failed: connection to server at \"127.0.0.1\", port 1 failed: Connection refused"),
    ],
)
def test_bad_input_gets_one_line_and_exit_1(args, error):
    result = run(*args)
    assert result.exit_code == 1
    assert result.output.startswith(error), result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_debug_shows_the_traceback():
    result = run("--debug", "optimize", "--study", "wien")
    assert result.exit_code == 1 and result.exception is not None
    assert "study 'wien' is unknown" in str(result.exception)


def test_bad_input_leaves_an_existing_study_intact(small_study, tmp_path, write_study):
    url, name = small_study
    before = [(t.number, t.state, t.value) for t in optuna.load_study(
        study_name=name, storage=url).trials]
    bad = write_study("small", text="[data]\ndataset = 'wine'\n[search]\noptimizers = ['x']\n")
    result = run("optimize", "--study", str(bad), "--storage", url)
    assert result.exit_code == 1
    after = [(t.number, t.state, t.value) for t in optuna.load_study(
        study_name=name, storage=url).trials]
    assert after == before


def test_ctrl_c_during_the_final_refresh_still_prints_the_summary_and_exits_130(
        write_study, tmp_path, monkeypatch):
    import hpsearch.dashboard

    def interrupted(_study):  # where Ctrl-C lands: the refresh after the last trial
        raise KeyboardInterrupt

    monkeypatch.setattr(hpsearch.dashboard, "refresh_dashboard", interrupted)
    url = f"sqlite:///{tmp_path / 's.db'}"
    result = CliRunner().invoke(cli, ["optimize", "--study", str(write_study()), "--trials",
                                      "3", "--storage", url, "--quiet"])
    assert result.exit_code == 130, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"Study 'small' in {url}: 3 of 3 finished trials (ran 3 trials")
    assert lines[-1] == ("Interrupted after the search, while its dashboard note was "
                         "refreshed: `hpsearch dashboard --study small --refresh` rewrites it.")
    assert "Aborted" not in result.output and "Traceback" not in result.output
    again = CliRunner().invoke(cli, ["optimize", "--study", str(write_study()), "--trials",
                                     "3", "--storage", url, "--quiet"])
    assert again.exit_code == 130 and "nothing to run" in again.output
    assert optuna.load_study(study_name="small", storage=url).trials[-1].state.is_finished()


def test_ctrl_c_while_the_summary_prints_is_one_line_and_130(write_study, tmp_path,
                                                             monkeypatch):
    """Ctrl-C at a moment no command handles itself (here: the summary after the search)."""
    import hpsearch.cli

    def interrupted(*_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(hpsearch.cli, "_print_outcome", interrupted)
    url = f"sqlite:///{tmp_path / 's.db'}"
    result = CliRunner().invoke(cli, ["optimize", "--study", str(write_study()), "--trials",
                                      "2", "--storage", url, "--quiet"])
    assert result.exit_code == 130, result.output
    assert result.output.strip().splitlines() == [
        "Interrupted. What was stored is kept; run the same command again to continue."]
    assert len(optuna.load_study(study_name="small", storage=url).trials) == 2


def test_a_database_lost_while_a_report_reads_it_is_one_line(write_study, monkeypatch):
    from conftest import _fresh_database
    from test_databases import _drop

    import hpsearch.export

    with contextlib.contextmanager(_fresh_database)("postgres") as url:
        made = run("optimize", "--study", str(write_study()), "--trials", "3", "--storage", url,
                   "--quiet")
        assert made.exit_code == 0, made.output
        trials_frame = hpsearch.export.trials_frame

        def lost_first(*args, **kwargs):  # the database dropped once the trials were read
            _drop("postgres", url)
            return trials_frame(*args, **kwargs)

        monkeypatch.setattr(hpsearch.export, "trials_frame", lost_first)
        result = run("report", "--study", "small", "--storage", url)
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: lost the storage {url}: "), result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.fixture
def searched(write_study, tmp_path):
    """(study file, storage URL) of a fresh 4-trial search of the small wine study."""
    path = write_study()
    url = f"sqlite:///{tmp_path / 'searched.db'}"
    made = run("optimize", "--study", str(path), "--trials", "4", "--storage", url, "--quiet")
    assert made.exit_code == 0, made.output
    return path, url


@pytest.mark.parametrize("command", [
    ["report", "--top", "2"], ["export", "--out", "{tmp}/out"], ["train", "--trial", "0"],
    ["dashboard", "--refresh"], ["confirm", "--top", "1", "--seeds", "2", "--quiet"]],
    ids=lambda command: command[0])
def test_study_is_a_stored_name_or_its_study_file_for_every_command(searched, tmp_path,
                                                                      command):
    path, url = searched
    command = [part.format(tmp=tmp_path) for part in command]
    by_name = run(*command[:1], "--study", "small", *command[1:], "--storage", url)
    by_file = run(*command[:1], "--study", str(path), *command[1:], "--storage", url)
    assert by_name.exit_code == 0, by_name.output
    assert by_file.exit_code == 0, by_file.output
    if command[0] in ("report", "export"):  # reading only: the same output
        assert by_file.output == by_name.output


def test_read_commands_open_the_storage_read_only(searched, tmp_path):
    _, url = searched
    database = tmp_path / "searched.db"
    database.chmod(0o444)
    before = database.read_bytes()
    listed = run("studies", "--storage", url)
    assert listed.exit_code == 0 and "small" in listed.output
    assert run("report", "--study", "small", "--storage", url).exit_code == 0
    assert database.read_bytes() == before
    typo = tmp_path / "serched.db"
    for command in (["studies"], ["report", "--study", "small"]):
        result = run(*command, "--storage", f"sqlite:///{typo}")
        assert (result.exit_code, result.output) == (
            1, f"Error: cannot open storage sqlite:///{typo}: no such file\n")
    assert not typo.exists()  # never an empty database left behind


def test_small_input_defects_are_one_line_errors(write_study, tmp_path):
    threads = run("optimize", "--study", str(write_study()), "--trials", "1", "--threads", "0")
    assert threads.exit_code == 2 and "'--threads': 0 is not in the range x>=1" in threads.output
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    as_study = run("optimize", "--study", str(folder), "--trials", "1")
    assert (as_study.exit_code, as_study.output) == (
        1, f"Error: study file {folder} is a folder, not a .toml file\n")


def test_a_target_below_the_stored_count_is_said_as_it_is(searched):
    path, url = searched
    result = run("optimize", "--study", str(path), "--trials", "2", "--storage", url, "--quiet")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == (
        f"Study 'small' in {url}: 4 (the target is 2) finished trials (nothing to run: the "
        "target was already reached).")


def test_a_training_that_diverges_exits_1_and_saves_nothing(tmp_path):
    model = tmp_path / "m.pt"
    result = run("train", "--study", "linreg", "--set", "scheduler=none", "--set", "lr=50",
                 "--save", str(model))
    assert result.exit_code == 1, result.output
    assert result.output.splitlines()[-1].startswith("Error: the run diverged at epoch ")
    assert "no model was saved" in result.output and not model.exists()


def test_a_reader_that_closes_the_pipe_ends_the_command_quietly(searched):
    """`hpsearch report | head`: the pipe is closed before the report is written."""
    import os
    import subprocess
    import sys

    _, url = searched
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written
    try:
        done = subprocess.run([sys.executable, "-m", "hpsearch", "report", "--study", "small",
                               "--storage", url], stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=300)
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (0, "")
