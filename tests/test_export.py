"""`hpsearch report` and `hpsearch export` through the real CLI, on the real small study and on
hand-built SQLite studies for the bad inputs; the files export writes, and every plot."""

from __future__ import annotations

import io
import re
from pathlib import Path

import optuna
import pandas as pd
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from hpsearch.cli import cli
from hpsearch.export import export_report
from hpsearch.plots import (
    plot_history,
    plot_importances,
    plot_loss_by_scheduler,
    plot_lr_curves,
    plot_lr_vs_loss,
    plot_val_loss_curves,
)
from hpsearch.report import curves_frame, format_cell, param_importances, trials_frame
from hpsearch.studies import load_stored_study
from tests.test_report import add_trial, assert_valid_markdown_table

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOTS = ["history.png", "loss_by_scheduler.png", "val_loss_curves.png", "lr_curves.png",
         "lr_vs_loss.png", "importances.png"]
TABLES = ["leaderboard", "schedulers", "optimizers", "pairs"]


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert len(data) > 1000, path
    assert data.startswith(PNG_SIGNATURE), path


@pytest.fixture(scope="module")
def exported(small_study: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    url, name = small_study
    out = tmp_path_factory.mktemp("export") / "results" / name
    code, output = run("export", "--study", name, "--storage", url, "--out", str(out))
    assert code == 0, output
    assert output.startswith(f"Wrote 17 files for study {name!r} to {out}:\n")
    return out


@pytest.fixture
def no_complete(tmp_path: Path) -> str:
    """A SQLite study whose trials were all pruned or diverged."""
    url = f"sqlite:///{tmp_path / 'none.db'}"
    study = optuna.create_study(study_name="stalled", storage=url)
    add_trial(study, 0.9, state=TrialState.PRUNED)
    add_trial(study, 0.8, state=TrialState.PRUNED)
    add_trial(study, 0.7, state=TrialState.PRUNED, reason="diverged")
    return url


# -- export -----------------------------------------------------------------------------------
def test_export_writes_every_file(exported):
    expected = {"trials.csv", "importances.csv", "report.md", *PLOTS}
    expected |= {f"{name}.{ext}" for name in TABLES for ext in ("csv", "md")}
    assert {p.name for p in exported.iterdir()} == expected
    for name in PLOTS:
        assert_png(exported / name)


def test_trials_csv_round_trips_through_pandas(exported, small_study):
    url, name = small_study
    frame = trials_frame(load_stored_study(name, url))
    dtypes = {c: str(t) for c, t in frame.dtypes.items() if c != "datetime_start"}
    back = pd.read_csv(exported / "trials.csv", dtype=dtypes, parse_dates=["datetime_start"])
    pd.testing.assert_frame_equal(back, frame)


@pytest.mark.parametrize("table", TABLES)
def test_csv_and_markdown_carry_the_same_numbers(exported, table):
    frame = pd.read_csv(exported / f"{table}.csv", keep_default_na=False, na_values=[""])
    body = assert_valid_markdown_table((exported / f"{table}.md").read_text().rstrip("\n"),
                                       frame)
    for cells, values in zip(body, frame.itertuples(index=False, name=None), strict=True):
        for cell, value in zip(cells, values, strict=True):
            if isinstance(value, float) and cell:
                assert float(cell) == pytest.approx(value, rel=1e-5)
            else:
                assert cell == format_cell(value)


def test_report_md_links_every_plot_and_file(exported, small_study):
    text = (exported / "report.md").read_text()
    assert text.startswith(f"# Study `{small_study[1]}`: which schedule wins\n")
    assert re.findall(r"!\[[^\]]+\]\(([^)]+)\)", text) == PLOTS
    linked = set(re.findall(r"^- \[([^\]]+)\]\(\1\)", text, flags=re.M))
    assert linked == {"trials.csv", "importances.csv", *(f"{t}.csv" for t in TABLES)}
    for heading in ("## Verdict", "## Leaderboard (top 10)", "## Which schedule wins",
                    "## Which optimizer wins", "## Which optimizer × scheduler pair wins"):
        assert f"\n{heading}\n" in text


def test_export_is_deterministic(exported, small_study, tmp_path):
    url, name = small_study
    again = export_report(name, url, tmp_path / "again")
    for file in again.files:
        assert (tmp_path / "again" / file).read_bytes() == (exported / file).read_bytes(), file


def test_export_skips_importances_with_too_few_trials(tmp_path):
    url = f"sqlite:///{tmp_path / 'two.db'}"
    study = optuna.create_study(study_name="two", storage=url)
    add_trial(study, 0.3, scheduler="step")
    add_trial(study, 0.5, scheduler="cosine", lr=0.1)
    out = tmp_path / "out"
    code, output = run("export", "--study", "two", "--storage", url, "--out", str(out))
    assert code == 0, output
    assert ("Skipped parameter importances: importances need at least 3 complete trials; the "
            "study has 2.\n") in output
    assert not (out / "importances.png").exists()
    assert ("### Parameter importances\n\nNot drawn: importances need at least 3 complete "
            "trials; the study has 2.") in (out / "report.md").read_text()
    for name in PLOTS[:-1]:
        assert_png(out / name)


# -- plots ------------------------------------------------------------------------------------
def test_every_plot_is_a_png(real_study, tmp_path):
    study, frame = real_study
    curves = curves_frame(study)
    drawn = {
        "history": lambda p: plot_history(frame, p),
        "box": lambda p: plot_loss_by_scheduler(frame, p),
        "val": lambda p: plot_val_loss_curves(frame, curves, p),
        "lr": lambda p: plot_lr_curves(frame, curves, p),
        "scatter": lambda p: plot_lr_vs_loss(frame, p),
        "importances": lambda p: plot_importances(param_importances(study), p),
    }
    for name, draw in drawn.items():
        figure = draw(tmp_path / f"{name}.png")
        assert figure.axes, name
        assert_png(tmp_path / f"{name}.png")
    lines = drawn["lr"](tmp_path / "lr.png").axes[0].get_lines()
    schedulers = set(frame.loc[frame["state"] == "complete", "scheduler"])
    assert len(lines) == len(schedulers)  # one curve per scheduler's best trial


@pytest.fixture(scope="module")
def real_study(small_study):
    study = load_stored_study(small_study[1], small_study[0])
    return study, trials_frame(study)


# -- report -----------------------------------------------------------------------------------
def test_report_prints_leaderboard_summaries_and_verdict(small_study, real_study):
    url, name = small_study
    study, _ = real_study
    code, output = run("report", "--study", name, "--storage", url, "--top", "3")
    assert code == 0, output
    lines = output.split("\n")
    assert lines[0].startswith(f"Study {name!r} in {url}: {len(study.trials)} trials (")
    board = lines[lines.index("Leaderboard (top 3, by validation loss)") + 1:][:4]
    assert board[0].split()[:4] == ["rank", "number", "state", "value"]
    assert board[1].split()[:3] == ["1", str(study.best_trial.number), "complete"]
    for title in ("Which schedule wins (by scheduler)", "Which optimizer wins (by optimizer)",
                  "Which optimizer × scheduler pair wins (by pair)", "Verdict"):
        assert title in lines
    assert f"The best trial is #{study.best_trial.number}:" in " ".join(lines)
    assert max(map(len, lines)) <= 120  # a terminal's width, whatever the study holds
    params = lines[lines.index("Their schedule's and optimizer's own parameters") + 1]
    assert params.startswith(f"#{study.best_trial.number}: ")
    shares = lines[lines.index("Parameter importances (fANOVA, over the complete trials)") + 1:]
    assert shares[0].split()[0] in study.best_trial.params


def test_report_as_markdown_and_as_csv(small_study, real_study):
    url, name = small_study
    _, frame = real_study
    code, output = run("report", "--study", name, "--storage", url, "--by", "optimizer",
                       "--format", "markdown")
    assert code == 0, output
    assert "## Which optimizer wins" in output and "## Which schedule wins" not in output
    tables = re.findall(r"(?:^\|.*\|\n)+", output, flags=re.M)
    assert len(tables) == 3  # leaderboard, the optimizer table, the importances
    assert "## Parameter importances" in output
    code, output = run("report", "--study", name, "--storage", url, "--by", "scheduler",
                       "--format", "csv", "--top", "4")
    assert code == 0, output
    board, by_scheduler, importances = output.strip().split("\n\n")
    assert board.startswith("# leaderboard (top 4)\n")
    assert by_scheduler.startswith("# by scheduler\n")
    assert importances.startswith("# importances\n")
    assert pd.read_csv(io.StringIO(importances), comment="#")["fANOVA"].sum() == \
        pytest.approx(1.0)
    assert len(pd.read_csv(io.StringIO(board), comment="#")) == 4
    table = pd.read_csv(io.StringIO(by_scheduler), comment="#")
    assert table["trials"].sum() == len(frame)


@pytest.mark.parametrize(("args", "error"), [
    (["--by", "foo"], "Error: by 'foo' is unknown; known: scheduler, optimizer, pair"),
    (["--format", "xml"], "Error: format 'xml' is unknown; known: table, markdown, csv"),
    (["--top", "0"], "Error: --top must be >= 1; got 0"),
])
def test_report_bad_options_are_one_line_errors(small_study, args, error):
    url, name = small_study
    code, output = run("report", "--study", name, "--storage", url, *args)
    assert (code, output) == (1, error + "\n")


@pytest.mark.parametrize("command", ["report", "export"])
def test_unknown_study_lists_the_storages_studies(small_study, command, tmp_path):
    url, name = small_study
    code, output = run(command, "--study", "nope", "--storage", url, "--out", str(tmp_path))\
        if command == "export" else run(command, "--study", "nope", "--storage", url)
    assert (code, output) == (1, f"Error: no study 'nope' in {url}; it has: {name}\n")


@pytest.mark.parametrize("command", ["report", "export"])
def test_a_study_without_complete_trials_says_so_with_its_counts(no_complete, command,
                                                                 tmp_path):
    out = tmp_path / "out"
    extra = ["--out", str(out)] if command == "export" else []
    code, output = run(command, "--study", "stalled", "--storage", no_complete, *extra)
    assert (code, output) == (1, "Error: study 'stalled' has no complete trial yet (3 trials: "
                                 "2 pruned, 1 diverged, 0 failed, 0 running); nothing to rank\n")
    assert not out.exists()


def test_export_to_an_unwritable_folder_is_a_one_line_error(small_study, tmp_path):
    url, name = small_study
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, output = run("export", "--study", name, "--storage", url, "--out",
                       str(blocker / "results"))
    assert (code, output) == (1, f"Error: cannot write to --out {blocker / 'results'}: "
                                 "Not a directory\n")
