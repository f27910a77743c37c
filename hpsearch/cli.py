"""The `hpsearch` command: each command parses its options, calls one `hpsearch.api` function
(whose defaults are the command's) and formats what it returns. Errors of the user's input
become one `Error: ...` line and exit 1 (a traceback only with --debug)."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import click

import hpsearch.api as hp
from hpsearch import __version__
from hpsearch.errors import HPSearchError

# Each command imports what it uses when it runs: `hpsearch --help` (and each command's) must
# not wait for torch, Optuna or pandas, and the reading commands never import torch.
if TYPE_CHECKING:
    from hpsearch.config import EvaluationConfig
    from hpsearch.data import Dataset
    from hpsearch.params import Value
    from hpsearch.records import TrialCounts
    from hpsearch.search.run import Progress, SearchOutcome
    from hpsearch.training import FitResult, TrainedRun

# storage.urls.STORAGE_ENV, spelled here: storage.urls imports Optuna (tests/test_startup.py
# checks they agree).
STORAGE_HELP = ("Storage URL (default: $HPSEARCH_STORAGE, else sqlite:///hpsearch.db), e.g. "
                "sqlite:///runs/wine.db or postgresql+psycopg://user@host/db.")


STORED_STUDY_HELP = ("A stored study: its name, or its study file (a path, or a name in "
                     "studies/), whose name it is stored under.")


def _storage_option(function: Callable) -> Callable:
    return click.option("--storage", metavar="URL", help=STORAGE_HELP)(function)


def _stored_study_option(function: Callable) -> Callable:
    return click.option("--study", "study", required=True, metavar="NAME|PATH",
                        help=STORED_STUDY_HELP)(function)


def _command(function: Callable) -> Callable:
    """What every command does around its body: Optuna's log level (--verbose; Optuna is
    imported here, not with the CLI, and sets its own level when imported); the database
    lost at any point of a command with --storage as one StorageError; HPSearchError as a
    one-line click error, unless --debug asks for the traceback; and Ctrl-C at a moment the
    command does not handle itself (its imports, the summary) as one line and exit 130, as
    where it does."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        root = click.get_current_context().find_root().params
        try:
            import optuna

            from hpsearch.storage.urls import resolve_storage_url, storage_errors

            # Optuna's own warnings are tracebacks of failed trials (Ctrl-C included):
            # hpsearch reports failures in its summary instead; --verbose shows everything.
            optuna.logging.set_verbosity(optuna.logging.INFO if root.get("verbose")
                                         else optuna.logging.ERROR)
            guard = storage_errors(resolve_storage_url(kwargs["storage"])) \
                if "storage" in kwargs else contextlib.nullcontext()
            with guard:
                return function(*args, **kwargs)
        except HPSearchError as exc:
            if root.get("debug"):
                raise
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            if root.get("debug"):
                raise
            click.echo("Interrupted. What was stored is kept; run the same command again to "
                       "continue.", err=True)
            raise SystemExit(130) from None
        except BrokenPipeError:
            # The reader of our output has closed it (`| head`): it has read what it wanted,
            # and the command's work is done. Nothing more to say, and nowhere to say it.
            _drop_stdout()
            raise SystemExit(0) from None

    return wrapper


def _drop_stdout() -> None:
    """Send what is left to write on stdout nowhere, so that the interpreter's final flush
    does not fail on the closed pipe too."""
    import os
    import sys

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="hpsearch")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.option("-v", "--verbose", is_flag=True, help="Log every trial (Optuna's INFO logs).")
def cli(debug: bool, verbose: bool) -> None:
    """Search jointly over optimizers, learning rates and LR schedules for PyTorch training.

    Studies are Optuna studies in an RDB (SQLite by default), so optuna-dashboard and pandas
    read them too. Example:

    \b
        hpsearch optimize --study wine --trials 200
        hpsearch train --study wine --set optimizer=adam --set lr=0.1 --set scheduler=plateau
        hpsearch studies
    """
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


@cli.command()
@click.option("--study", "study", required=True, metavar="NAME|PATH",
              help="A study in studies/ (wine, digits, ...) or a path to a study .toml file.")
@click.option("--trials", type=int, default=100, show_default=True,
              help="Target number of finished trials (complete + pruned + diverged) of the "
                   "study: re-running continues up to it.")
@_storage_option
@click.option("--name", help="Store the study under this name instead of the file's name.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="torch CPU threads (1 is fastest for small models; each worker uses 1).")
@click.option("--workers", type=int, default=1, show_default=True,
              help="Worker processes on this machine sharing the study (about one per core).")
@click.option("--device", type=click.Choice(hp.DEVICES), default="auto", show_default=True,
              help="Where trials train: auto (CUDA, else MPS, else CPU), cpu, cuda, mps.")
@click.option("--engine", type=click.Choice(hp.ENGINES), default="auto", show_default=True,
              help="How trials train: reference (one at a time, any model), cohort (many at "
                   "once as one stacked model: built-in MLPs), auto (cohort where it can).")
@click.option("--cohort-size", type=int, default=hp.DEFAULT_COHORT_SIZE, show_default=True,
              help="Trials the cohort engine trains at once.")
@click.option("--quiet", is_flag=True,
              help="No header (what is searched, what was inferred from the data) and no "
                   "progress bar: only the summary.")
@_command
def optimize(study: str, trials: int, storage: str | None, name: str | None, threads: int,
             workers: int, device: str, engine: str, cohort_size: int, quiet: bool) -> None:
    """Search a study's joint optimizer x schedule space, persisted in the storage.

    Resumable: run the same command again after an interruption and it runs only the
    trials still missing to reach --trials. Several workers (--workers, or the same command
    on other machines with one PostgreSQL/MySQL --storage) share the study; the trial of a
    killed worker is failed and retried once its heartbeat is stale. Example:

    \b
        hpsearch optimize --study wine --trials 200
        hpsearch optimize --study wine --trials 200 --workers 2
        hpsearch optimize --study wine --trials 200 --engine cohort --cohort-size 64
        hpsearch optimize --study studies/wine.toml --trials 50 --storage sqlite:///w.db
        hpsearch optimize --study wine --trials 500 --workers 4 \\
            --storage postgresql+psycopg://hp@db.example/hpsearch
    """
    import torch

    from hpsearch.storage.urls import mask_url, resolve_storage_url

    config = hp.config(study, name)
    url = resolve_storage_url(storage)
    torch.set_num_threads(threads)
    progress = _ProgressBar(config.name, trials, disable=quiet, url=mask_url(url),
                            evaluation=config.evaluation)
    try:
        outcome = hp.search(config, trials, storage=url, workers=workers, device=device,
                            engine=engine, cohort_size=cohort_size,
                            on_progress=progress.update, on_start=progress.start)
    except hp.SearchInterrupted as interrupted:
        progress.close()
        _print_outcome(interrupted.outcome, url, config.evaluation)
        click.echo("Interrupted after the search, while its dashboard note was refreshed: "
                   f"`hpsearch dashboard --study {config.name} --refresh` rewrites it.",
                   err=True)
        raise SystemExit(130) from None
    except KeyboardInterrupt:
        progress.close()
        click.echo(f"Interrupted. Finished trials are stored in {mask_url(url)}; run the same "
                   "command again to continue.", err=True)
        raise SystemExit(130) from None
    progress.close()
    _print_outcome(outcome, url, config.evaluation)


class _ProgressBar:
    """The search's header (to stdout), then a tqdm bar of finished trials with the best
    validation loss so far (to stderr); neither with --quiet."""

    def __init__(self, study_name: str, target: int, disable: bool, url: str,
                 evaluation: EvaluationConfig):
        self.study_name = study_name
        self.target = target
        self.disable = disable
        self.url = url
        self.evaluation = evaluation
        self.bar = None

    def start(self, counts: TrialCounts, data: Dataset) -> None:
        """Say what is searched (what was inferred from the data too), then show the bar."""
        from tqdm import tqdm

        if not self.disable:
            click.echo(f"Study {self.study_name!r} in {self.url}: the target is {self.target} "
                       f"finished trials ({counts.finished} finished so far).")
            for line in data.describe():
                click.echo(f"  {line}")
            click.echo(f"  evaluation: {self.evaluation.describe()}")

        self.bar = tqdm(total=self.target, initial=min(counts.finished, self.target),
                        desc=self.study_name, unit="trial", disable=self.disable or None,
                        dynamic_ncols=True)

    def update(self, progress: Progress) -> None:
        if self.bar is None:
            return
        if progress.best_value is not None:
            self.bar.set_postfix_str(f"best val loss {progress.best_value:.4g}", refresh=False)
        self.bar.update(min(progress.finished, self.target) - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _print_outcome(outcome: SearchOutcome, url: str, evaluation: EvaluationConfig) -> None:
    from optuna.trial import TrialState

    from hpsearch.records import (
        ATTR_END_DETAIL,
        ATTR_VAL_ACCURACY,
        ATTR_VAL_LOSS_STD,
        ATTR_VAL_RMSE,
    )
    from hpsearch.storage.urls import mask_url

    c = outcome.counts
    name = outcome.study.study_name
    ran = f"ran {outcome.ran} trials in {outcome.seconds:.1f} s" if outcome.ran else \
        "nothing to run: the target was already reached"
    if outcome.ran and outcome.workers > 1:
        ran += f" with {outcome.workers} workers"
    if outcome.ran and outcome.engine == hp.COHORT:
        ran += f", cohort engine, {outcome.cohort_size} trials at a time"
    # More finished than the target: an earlier, larger --trials, or (by at most one trial
    # each) other commands sharing the study.
    finished = f"{c.finished} of {outcome.target}" if c.finished <= outcome.target else \
        f"{c.finished} (the target is {outcome.target})"
    click.echo(f"Study {name!r} in {mask_url(url)}: {finished} finished trials ({ran}).")
    click.echo(f"  complete {c.complete}, pruned {c.pruned}, diverged {c.diverged}, "
               f"failed {c.failed}")
    if evaluation.runs > 1:
        click.echo(f"  evaluation: {evaluation.describe()}; a trial's value is their mean "
                   "validation loss")
    if c.failed:
        failed = [t for t in outcome.study.get_trials(deepcopy=False)
                  if t.state == TrialState.FAIL]
        reason = failed[-1].user_attrs.get(
            ATTR_END_DETAIL, failed[-1].system_attrs.get("fail_reason", "no reason recorded"))
        click.echo(f"  last failure (trial #{failed[-1].number}): {reason.splitlines()[-1]}")
    if outcome.ran and outcome.engine_note:
        click.echo(f"  reference engine: the cohort engine can't train this study "
                   f"({outcome.engine_note})")
    best = outcome.best_trial
    if best is None:
        click.echo("No complete trial yet: every trial was pruned, diverged or failed.")
        return
    accuracy = best.user_attrs.get(ATTR_VAL_ACCURACY)
    line = f"Best trial #{best.number}: validation loss {best.value:.5g}"
    if ATTR_VAL_LOSS_STD in best.user_attrs:
        line += f" (std {best.user_attrs[ATTR_VAL_LOSS_STD]:.3g} over {evaluation.runs} runs)"
    if accuracy is not None:
        line += f", validation accuracy {accuracy:.4f}"
    if ATTR_VAL_RMSE in best.user_attrs:
        line += f", RMSE {best.user_attrs[ATTR_VAL_RMSE]:.5g} in the target's units"
    click.echo(line)
    _print_params(best.params)


def _print_params(params: Mapping[str, Value]) -> None:
    width = max(len(k) for k in params)
    for key, value in params.items():
        shown = f"{value:.6g}" if isinstance(value, float) else str(value)
        click.echo(f"  {key:<{width}}  {shown}")


@cli.command()
@click.option("--study", "study", required=True, metavar="NAME|PATH",
              help="A study file or a name in studies/ (with --set); a stored study, by its "
                   "name or its study file (with --trial).")
@click.option("--set", "assignments", multiple=True, metavar="NAME=VALUE",
              help="Fix one parameter (repeatable); the others take the study's fixed values, "
                   "else their defaults.")
@click.option("--trial", "trial_number", type=int,
              help="Re-train trial N of the stored study with its exact parameters and seed.")
@click.option("--seed", type=int, help="Seed for the weights and batch order (default: the "
                                       "study's seed).")
@click.option("--every", type=click.IntRange(min=1), default=1, show_default=True,
              help="Print every K-th epoch.")
@_storage_option
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="torch CPU threads.")
@click.option("--device", type=click.Choice(hp.DEVICES), default=None,
              help="Where to train: auto, cpu, cuda, mps (default: auto; with --trial: the "
                   "device the trial ran on).")
@click.option("--save", "save_path", metavar="PATH",
              help="Write the trained model, its study config, parameters and preprocessing "
                   "to this model file (for `hpsearch predict`); with --trial of several "
                   "runs, the first run's model.")
@click.option("--refit", is_flag=True,
              help="Train on the training and validation rows together (a final model): for "
                   "the epochs the trial ran (with --trial), else the study's epochs.")
@_command
def train(study: str, assignments: tuple[str, ...], trial_number: int | None, seed: int | None,
          every: int, storage: str | None, threads: int, device: str | None,
          save_path: str | None, refit: bool) -> None:
    """Train ONE configuration with the search's training loop, printing every epoch.

    Example (seed 004's wine run, seed 003's linear regression, a model to keep):

    \b
        hpsearch train --study wine --set optimizer=adam --set lr=0.1 \\
            --set scheduler=plateau --every 10
        hpsearch train --study linreg --set scheduler=none
        hpsearch train --study wine --trial 17      # re-train stored trial 17
        hpsearch train --study wine --trial 17 --refit --save wine.pt
    """
    import torch

    from hpsearch.params import parse_assignment

    torch.set_num_threads(threads)
    if trial_number is not None:
        if assignments or seed is not None:
            raise HPSearchError("--trial re-trains a stored trial as it was: it takes no --set "
                                "or --seed")
        study = hp.stored_name(study)
        again = hp.retrain(study, trial_number, storage=storage, device=device, refit=refit)
        state = again.trial.state.name.lower()
        if refit:
            runs = f"refit: seed {again.run.seed}, {len(again.run.result.history)} epochs"
        elif len(again.runs) <= 1:
            runs = f"seed {again.trial.user_attrs.get('seed')}"
        else:
            runs = (f"{len(again.runs)} runs; the first run's epochs below, the comparison of "
                    "their mean after them")
        click.echo(f"Re-training trial #{again.trial.number} of {study!r} ({state}, {runs}).")
        _print_refit(again.run)
        _print_params(again.params)
        _print_history(again.run.result, every)
        _print_rmse(again.run)
        if again.stored_loss is not None and again.retrained_loss is not None:
            difference = again.retrained_loss - again.stored_loss
            same = "identical" if difference == 0 else f"differs by {difference:.3g}"
            click.echo(f"Epoch {again.epoch}: stored validation loss {again.stored_loss:.6g}, "
                       f"re-trained {again.retrained_loss:.6g} ({same}).")
        _fail_if_diverged(again.run, save_path)
        _save(again.run, save_path, len(again.runs))
        return
    config = hp.config(study)
    given = dict(parse_assignment(text) for text in assignments)
    params, run = hp.train(config, given, seed=seed, device=device or "auto", refit=refit)
    click.echo(f"Training {config.name} ({config.data.dataset}, {config.training.epochs} "
               f"epochs, seed {config.seed if seed is None else seed}):")
    _print_refit(run)
    _print_params(params)
    _print_history(run.result, every)
    _print_rmse(run)
    if isinstance(run.model, torch.nn.Sequential) and len(run.model) == 1:
        layer = run.model[0]
        click.echo(f"Weights: {[round(w, 4) for w in layer.weight.detach()[0].tolist()]}")
        click.echo(f"Bias:    {layer.bias.detach()[0].item():.4f}")
    _fail_if_diverged(run, save_path)
    _save(run, save_path, 1)


def _fail_if_diverged(run: TrainedRun, save_path: str | None) -> None:
    """A run that diverged is a failed training (exit 1), and not a model to keep."""
    from hpsearch.records import DIVERGED

    if run.result.end_reason == DIVERGED:
        unsaved = "; no model was saved" if save_path else ""
        raise HPSearchError(f"the run diverged at epoch {len(run.result.history)}{unsaved} "
                            "(a lower lr, or gradient clipping, may keep it finite)")


def _print_refit(run: TrainedRun) -> None:
    if run.refit:
        click.echo(f"Refit on the training and validation rows together ({run.train_rows} "
                   "rows): val_loss below is the loss on those same rows.")


def _print_rmse(run: TrainedRun) -> None:
    """A standardized regression target's last validation loss as an RMSE in its units."""
    from hpsearch.data import REGRESSION

    last = run.result.last
    if last is None or run.preprocessing.task != REGRESSION or not run.config.data.scale_target:
        return
    rmse = run.preprocessing.rmse(last.val_loss)
    rows = "training and validation rows" if run.refit else "validation split"
    click.echo(f"RMSE on the {rows}, in the target's units: {rmse:.6g} (the losses above are "
               "of the standardized target)")


def _save(run: TrainedRun, path: str | None, runs: int) -> None:
    if path is None:
        return
    saved = run.save(path)
    which = f"the first of {runs} runs (fold {run.fold}, seed {run.seed}): " if runs > 1 else ""
    refit = ", refit on training + validation" if run.refit else ""
    click.echo(f"Saved the model ({which}{run.train_rows} training rows{refit}) to {saved}; "
               f"`hpsearch predict --model {saved} --data ROWS.csv` predicts with it.")


def _print_history(result: FitResult, every: int) -> None:
    classify = result.last is not None and result.last.val_accuracy is not None
    click.echo(f"{'epoch':>5}  {'lr':>10}  {'train_loss':>10}  {'val_loss':>10}"
               + (f"  {'val_acc':>7}" if classify else ""))
    for stats in result.history:
        if stats.epoch % every and stats is not result.last:
            continue
        line = (f"{stats.epoch:>5}  {stats.lr:>10.6f}  {stats.train_loss:>10.5f}  "
                f"{stats.val_loss:>10.5f}")
        if classify:
            line += f"  {stats.val_accuracy:>7.4f}"
        click.echo(line)
    if result.end_reason != "completed":
        click.echo(f"Stopped: {result.detail or result.end_reason}")


@cli.command()
@click.option("--model", "model_path", required=True, metavar="PATH",
              help="A model file written by `hpsearch train --save`.")
@click.option("--data", "data_path", required=True, metavar="PATH",
              help="Rows to predict: a .csv, .tsv or .parquet file with the model's input "
                   "columns (other columns, the target's too, are ignored).")
@click.option("--out", metavar="PATH",
              help="Write the predictions to this CSV file (default: CSV on stdout).")
@_command
def predict(model_path: str, data_path: str, out: str | None) -> None:
    """Predict new rows with a saved model, preprocessed as its training rows were.

    Missing values are filled as in training, an unseen category encodes as all zeros. Writes
    one CSV row per input row: for classification the predicted label (`prediction`) and
    each class's probability (`probability_<label>`), for regression the prediction in the
    target's units. A built-in dataset's columns are scikit-learn's feature names (those of
    `sklearn.datasets.load_wine(as_frame=True).frame`). Example:

    \b
        hpsearch train --study churn --set optimizer=adam --set lr=0.01 --save churn.pt
        hpsearch predict --model churn.pt --data new_customers.csv --out predictions.csv
    """
    predictions = hp.load_model(model_path).predict(data_path)
    if out is None:
        click.echo(predictions.to_csv(index=False), nl=False)
        return
    try:
        predictions.to_csv(out, index=False)
    except OSError as exc:
        raise HPSearchError(f"cannot write {out}: {exc.strerror or exc}") from None
    click.echo(f"Wrote {len(predictions)} predictions to {out}.")


@cli.command()
@_storage_option
@_command
def studies(storage: str | None) -> None:
    """List the studies in a storage, with trial counts and best values.

    Example:

    \b
        hpsearch studies --storage sqlite:///hpsearch.db
    """
    from hpsearch.storage.urls import mask_url, resolve_storage_url

    url = resolve_storage_url(storage)
    rows = hp.studies(url)
    if not rows:
        click.echo(f"No studies in {mask_url(url)}.")
        return
    click.echo(f"Studies in {mask_url(url)}:")
    header = (f"{'study':<20} {'trials':>6} {'complete':>8} {'pruned':>6} {'diverged':>8} "
              f"{'failed':>6} {'running':>7} {'queued':>6} {'best value':>11} {'best #':>6}  "
              "created")
    click.echo(header)
    for row in rows:
        c = row.counts
        best = f"{row.best_value:.5g}" if row.best_value is not None else "-"
        number = str(row.best_trial) if row.best_trial is not None else "-"
        click.echo(f"{row.name:<20} {c.total:>6} {c.complete:>8} {c.pruned:>6} "
                   f"{c.diverged:>8} {c.failed:>6} {c.running:>7} {c.waiting:>6} {best:>11} "
                   f"{number:>6}  "
                   f"{row.created}")
    for row in rows:
        if row.confirms:
            click.echo(f"{row.name}: the confirmation runs of {row.confirms!r} (one seed "
                       f"each, no best value): `hpsearch report --study {row.confirms}` shows "
                       "the confirmed verdict.")


@cli.command()
@click.option("--study", "study", required=True, metavar="NAME|PATH", help="A study file.")
@_command
def space(study: str) -> None:
    """Show a study's search space: every parameter, its domain and default.

    Example:

    \b
        hpsearch space --study wine
    """
    config = hp.config(study)
    described = config.load_data(arrays=True).describe()
    click.echo(f"Data {described[0]}")
    for line in described[1:]:
        click.echo(f"  {line}")
    click.echo(f"Evaluation: {config.evaluation.describe()}.")
    click.echo(f"Search space of {config.name} (optimizers: {', '.join(config.space.optimizers)};"
               f" schedulers: {', '.join(config.space.schedulers)}):")
    params = config.space.relevant()
    width = max(len(p.name) for p in params)
    for param in params:
        default = "" if callable(param.default) else f"  (default {param.default!r})"
        click.echo(f"  {param.name:<{width}}  {param.describe()}{default}  {param.help}")


@cli.command()
@click.option("--study", "study", metavar="NAME|PATH",
              help="Open this stored study's page (default: the list of studies); only its "
                   "note and figures are refreshed. Its name, or its study file.")
@_storage_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on. Any other lets other machines in: the dashboard "
                   "has no login and can modify studies.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="Port to listen on (0: any free port).")
@click.option("--refresh", "refresh_only", is_flag=True,
              help="Only rewrite the hpsearch notes and figures, then exit (no server): "
                   "updates a dashboard that is already open, e.g. while a search runs.")
@_command
def dashboard(study: str | None, storage: str | None, host: str, port: int,
              refresh_only: bool) -> None:
    """Serve optuna-dashboard on the storage, with hpsearch's notes and figures.

    On start, the note of each hpsearch study (its config and which schedule and optimizer
    win) and its figures (lr and validation-loss curves of the best trial per scheduler,
    final loss by scheduler and by optimizer) are rewritten from the trials stored so far;
    a finished `hpsearch optimize` rewrites them too. Trials appear live while a search runs.
    Example:

    \b
        hpsearch dashboard --study wine
        hpsearch dashboard --study wine --refresh     # update the note during a search
        hpsearch dashboard --host 0.0.0.0 --port 8081 --storage sqlite:///runs/wine.db
    """
    from hpsearch.storage.urls import mask_url, resolve_storage_url

    url = resolve_storage_url(storage)
    if refresh_only:
        names = hp.refresh_dashboards(study, url)
        click.echo(f"Refreshed the notes and figures of {', '.join(names)} in {mask_url(url)}."
                   if names else f"No hpsearch study in {mask_url(url)}: nothing to refresh.")
        return
    server = hp.dashboard(study, url, host, port)
    if server.is_public:
        click.echo(f"Warning: listening on {host}: anyone who can reach port {server.port} of "
                   "this machine can open the dashboard. It has no authentication and can "
                   "modify and delete studies.", err=True)
    refreshed = f"; notes and figures refreshed: {', '.join(server.refreshed)}" \
        if server.refreshed else ""
    click.echo(f"optuna-dashboard on {mask_url(url)}{refreshed}")
    click.echo(f"Open {server.url}  (Ctrl-C to stop)")
    server.serve_forever()
    click.echo("Dashboard stopped.")


@cli.command()
@_stored_study_option
@click.option("--top", type=int, default=10, show_default=True,
              help="Trials in the leaderboard.")
@click.option("--by", "by", multiple=True, metavar="scheduler|optimizer|pair",
              help="Which 'who wins' table to show (repeatable; default: all three).")
@click.option("--format", "fmt", default="table", show_default=True,
              metavar="table|markdown|csv", help="Aligned text, GitHub markdown, or CSV.")
@click.option("--wide", is_flag=True,
              help="Text: every column of a table on one line, however wide (default: fit 120 "
                   "columns).")
@_storage_option
@_command
def report(study: str, top: int, by: tuple[str, ...], fmt: str, wide: bool,
           storage: str | None) -> None:
    """Which schedule and optimizer win: leaderboard, per-group summaries and a verdict.

    The summaries give, per scheduler, optimizer or optimizer x scheduler pair, the trial
    counts by state and the best and median validation loss of the complete trials; the
    verdict says in words who leads, by how much, and on how many trials. Example:

    \b
        hpsearch report --study wine
        hpsearch report --study wine --top 5 --by scheduler --format markdown
    """
    from hpsearch.export import renderer

    render = renderer(fmt, wide)  # an unknown format fails before the study is read
    click.echo(render(hp.report(study, top, by, storage)))


@cli.command()
@_stored_study_option
@click.option("--out", "out", required=True, metavar="FOLDER",
              help="Folder to write to (created if needed; files of the same names are "
                   "replaced).")
@click.option("--top", type=int, default=10, show_default=True,
              help="Trials in the leaderboard.")
@_storage_option
@_command
def export(study: str, out: str, top: int, storage: str | None) -> None:
    """Write a study's report as CSV, markdown and PNG files, with a report.md linking them.

    trials.csv has every trial (parameters as columns); leaderboard, schedulers, optimizers
    and pairs come as .csv (full precision) and .md; the plots are PNG. Example:

    \b
        hpsearch export --study wine --out results/wine
    """
    study = hp.stored_name(study)
    exported = hp.export(study, out, top, storage)
    click.echo(f"Wrote {len(exported.files)} files for study {study!r} to {exported.folder}:")
    click.echo("  " + " ".join(exported.files))
    for title, why in exported.skipped.items():
        click.echo(f"Skipped {title.lower()}: {why}.")
    click.echo(f"Read {exported.folder / 'report.md'}")


@cli.command()
@_stored_study_option
@click.option("--top", type=int, default=3, show_default=True,
              help="Confirm the best K complete trials and the best K of each scheduler "
                   "(equal parameters count once).")
@click.option("--seeds", type=int, default=10, show_default=True,
              help="Seeds per configuration (at least 2); stored runs count, so a larger "
                   "number adds seeds.")
@click.option("--trial", "trial_numbers", type=int, multiple=True, metavar="N",
              help="Confirm trial N instead of the best ones (repeatable; complete or pruned).")
@click.option("--workers", type=int, default=1, show_default=True,
              help="Worker processes training runs side by side (about one per core).")
@click.option("--device", type=click.Choice(hp.DEVICES), default="auto", show_default=True,
              help="Where runs train: auto (CUDA, else MPS, else CPU), cpu, cuda, mps.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="torch CPU threads without --workers (each worker uses 1).")
@click.option("--engine", type=click.Choice(hp.ENGINES), default="auto", show_default=True,
              help="What trains the runs: auto (cohort where the model stacks), reference, "
                   "cohort.")
@_storage_option
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_command
def confirm(study: str, top: int, seeds: int, trial_numbers: tuple[int, ...], workers: int,
            device: str, threads: int, engine: str, storage: str | None, quiet: bool) -> None:
    """Re-train a study's best configurations over several seeds: is the winner real?

    Each configuration is trained from scratch, without pruning, once per seed (the same
    seeds for all, none used by the search; the same split), and measured on the validation
    split and on the held-out test split the search never saw. Prints per configuration the
    mean and 95% interval of each metric and how optimistic the search's value was, and
    paired Wilcoxon comparisons (Holm-corrected) of the best configuration and the best
    schedule against the runners-up, with a verdict: winner, not the winner, tied
    (identical), or inconclusive (not significant, or more seeds needed).
    Runs are stored as the study NAME:confirm in the same storage (optuna-dashboard shows
    it; `hpsearch report` and `export` include it); re-running resumes. Example:

    \b
        hpsearch confirm --study wine --top 3 --seeds 10
        hpsearch confirm --study wine --trial 137 --trial 52 --seeds 20 --workers 4
    """
    import torch
    from tqdm import tqdm

    from hpsearch.confirm import confirm_study_name
    from hpsearch.export import confirmation_text
    from hpsearch.storage.urls import mask_url, resolve_storage_url

    url = resolve_storage_url(storage)
    study = hp.stored_name(study)
    torch.set_num_threads(threads)
    bars: list[Any] = []

    def start(to_run: int, stored: int) -> None:
        bars.append(tqdm(total=to_run, desc=confirm_study_name(study), unit="run",
                         disable=quiet or None, dynamic_ncols=True))

    def progress(ran: int) -> None:
        bars[0].update(ran - bars[0].n)

    try:
        outcome = hp.confirm(study, top, seeds, url, workers, device, trial_numbers,
                             on_start=start, on_progress=progress, engine=engine)
    except KeyboardInterrupt:
        click.echo(f"Interrupted. Finished runs are stored in {mask_url(url)} (study "
                   f"{confirm_study_name(study)!r}); run the same command again to continue.",
                   err=True)
        raise SystemExit(130) from None
    finally:
        for bar in bars:
            bar.close()
    stored = len(outcome.configurations) * outcome.seeds - outcome.planned
    ran = (f"ran {outcome.ran} runs in {outcome.seconds:.1f} s ({outcome.engine} engine"
           + (f", {outcome.workers} workers" if outcome.workers > 1 else "") + ")"
           if outcome.planned else "nothing to run")
    click.echo(f"Confirmed {len(outcome.configurations)} configurations of {study!r} over "
               f"{outcome.seeds} seeds in {mask_url(url)}: {ran}; {stored} runs were stored "
               "already.")
    click.echo()
    click.echo(confirmation_text(outcome.analysis, study))


def main() -> None:
    """The `hpsearch` command, ended without the interpreter's teardown once its work is done
    (see `hpsearch.fast_exit`)."""
    try:
        cli(prog_name="hpsearch")
        code: Any = 0
    except SystemExit as exit_:
        code = exit_.code
    if code is not None and not isinstance(code, int):  # SystemExit("message"): Python's own
        raise SystemExit(code)
    from hpsearch.fast_exit import exit_without_teardown

    exit_without_teardown(code or 0)
