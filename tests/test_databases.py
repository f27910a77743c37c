"""Storage URLs of network databases as a user gets them wrong: one line within seconds, never
a password; and the real PostgreSQL and MariaDB servers with passwords in their URLs."""

from __future__ import annotations

import contextlib
import multiprocessing
import uuid

import pytest
from click.testing import CliRunner
from conftest import _fresh_database

from hpsearch.cli import cli
from hpsearch.storage.urls import mask_url, open_storage

SECRET = "s3cr%40t"  # percent-encoded "s3cr@t"


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.mark.parametrize(
    ("url", "error"),
    [
        (f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:1/test",
         "Error: cannot open storage postgresql+psycopg://postgres:***@127.0.0.1:1/test: "
         "connection failed: connection to server at \"127.0.0.1\", port 1 failed: "
         "Connection refused"),
        (f"mysql+pymysql://root:{SECRET}@127.0.0.1:1/test",
         "Error: cannot open storage mysql+pymysql://root:***@127.0.0.1:1/test: (2003, \"Can't "
         "connect to MySQL server on '127.0.0.1' ([Errno 111] Connection refused)\")"),
        (f"postgresql+psycopg://postgres:{SECRET}@no-such-host.invalid/test",
         "Error: cannot open storage postgresql+psycopg://postgres:***@no-such-host.invalid/"
         "test: failed to resolve host 'no-such-host.invalid'"),
        (f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:99999/test",
         "Error: cannot open storage postgresql+psycopg://postgres:***@127.0.0.1:99999/test: "
         "connection is bad: invalid port number"),
        ("postgresql+psycopg://postgres:s3cr@t@127.0.0.1/test",
         "Error: <storage URL hidden: it may contain a password>: it has an '@' after the user "
         "name; write an @, : or / in a password percent-encoded (%40, %3A, %2F)"),
        (f"postgresql+psycopg2://postgres:{SECRET}@127.0.0.1/test",
         "Error: storage postgresql+psycopg2://postgres:***@127.0.0.1/test: its database "
         "driver 'psycopg2' is not installed; install it with: pip install 'hpsearch[postgres]' "
         "and use a URL like postgresql+psycopg://user:password@host/db"),
        (f"mysql://root:{SECRET}@127.0.0.1/test",
         "Error: storage mysql://root:***@127.0.0.1/test: its database driver 'MySQLdb' is not "
         "installed; install it with: pip install 'hpsearch[mysql]' and use a URL like "
         "mysql+pymysql://user:password@host/db"),
        (f"postgres+psycopg://postgres:{SECRET}@127.0.0.1/test",
         "Error: storage postgres+psycopg://postgres:***@127.0.0.1/test: unknown database kind "
         "'postgres+psycopg'"),
        (f"postgresql+psycopg//postgres:{SECRET}@127.0.0.1/test",
         "Error: '<storage URL hidden: it may contain a password>' is not a storage URL"),
    ],
)
@pytest.mark.parametrize("command", ["optimize", "studies"])
def test_a_bad_or_unreachable_database_fails_fast_in_one_masked_line(command, url, error):
    args = ["optimize", "--study", "wine", "--storage", url] if command == "optimize" else \
        ["studies", "--storage", url]
    result = run(*args)  # fails at once: connections time out after CONNECT_TIMEOUT_S
    assert result.exit_code == 1
    assert result.output.startswith(error), result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "s3cr" not in result.output


def test_a_missing_database_and_a_wrong_password_are_one_line(postgres_url, mariadb_url):
    cases = [
        (postgres_url.rsplit("/", 1)[0] + "/no_such_db",
         'database "no_such_db" does not exist'),
        (mariadb_url.rsplit("/", 1)[0] + "/no_such_db", "(1049, \"Unknown database "
                                                        "'no_such_db'\")"),
        (mariadb_url.replace("root@", f"root:{SECRET}@"),
         "(1045, \"Access denied for user 'root'@"),
    ]
    for url, reason in cases:
        result = run("studies", "--storage", url)
        assert result.exit_code == 1
        assert result.output.startswith(f"Error: cannot open storage {mask_url(url)}: ")
        assert reason in result.output and len(result.output.strip().splitlines()) == 1
        assert "s3cr" not in result.output


@pytest.fixture
def mariadb_user_url(mariadb_url):
    """The run's MariaDB database, through a user of its own that has a password."""
    import pymysql

    user = f"hp_{uuid.uuid4().hex[:8]}"
    database = mariadb_url.rsplit("/", 1)[1]
    admin = pymysql.connect(host="127.0.0.1", port=3306, user="root", autocommit=True)
    with admin:
        admin.cursor().execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY 's3cr@t'")
        admin.cursor().execute(f"GRANT ALL ON {database}.* TO '{user}'@'%'")
        try:
            yield f"mysql+pymysql://{user}:{SECRET}@127.0.0.1:3306/{database}"
        finally:
            admin.cursor().execute(f"DROP USER '{user}'@'%'")


@pytest.mark.parametrize("database", ["postgres", "mariadb"])
def test_passwords_never_show_in_a_search_its_logs_and_the_listing(
        write_study, request, database):
    if database == "postgres":  # the server trusts local users: any password is accepted
        url = request.getfixturevalue("postgres_url").replace("postgres@", f"postgres:{SECRET}@")
    else:
        url = request.getfixturevalue("mariadb_user_url")
    name = f"masked_{database}"
    shown = mask_url(url)
    assert ":***@" in shown and "s3cr" not in shown
    result = run("-v", "optimize", "--study", str(write_study()), "--name", name,
                 "--trials", "3", "--workers", "2", "--storage", url)
    assert result.exit_code == 0, result.output
    assert f"Study '{name}' in {shown}: 3 of 3 finished trials" in result.output
    listing = run("studies", "--storage", url)
    assert listing.exit_code == 0 and f"Studies in {shown}:" in listing.output
    assert any(line.split()[:2] == [name, "3"] for line in listing.output.splitlines())
    wrong = run("studies", "--storage", url.replace(SECRET, "wrong%40pw"))
    assert "s3cr" not in result.output + listing.output + wrong.output
    assert "wrong" not in wrong.output


def test_postgresql_commits_do_not_wait_for_the_disk_and_url_options_are_kept(postgres_url):
    """A search's sessions run with synchronous_commit=off (as SQLite runs with
    synchronous=NORMAL); options the user put in the URL still apply."""
    import sqlalchemy

    from hpsearch.storage.urls import open_storage

    for query, timeout in (("", "0"), ("?options=-c%20statement_timeout%3D5000", "5s")):
        storage = open_storage(postgres_url + query)
        engine = storage._backend.engine
        with engine.connect() as connection:
            settings = [connection.execute(sqlalchemy.text(f"SHOW {name}")).scalar()
                        for name in ("synchronous_commit", "statement_timeout")]
        engine.dispose()
        assert settings == ["off", timeout]


@pytest.mark.parametrize("database", ["sqlite", "postgres_url", "mariadb_url"])
@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_what_a_search_writes_in_bulk_reads_back_as_written(database, request, tmp_path):
    """The write-behind storage writes its records in bulk (on PostgreSQL through COPY):
    every kind of record, awkward values included, reads back through Optuna's own storage
    as it was set; and its own loader (what other workers read it with) reads every trial as
    Optuna's does."""
    import optuna
    from optuna.storages._rdb.storage import _create_scoped_session

    from hpsearch.storage.loader import load_trials
    from hpsearch.storage.urls import open_storage

    url = (f"sqlite:///{tmp_path / 'bulk.db'}" if database == "sqlite"
           else request.getfixturevalue(database))
    storage = open_storage(url)
    study = optuna.create_study(study_name=f"bulk_{uuid.uuid4().hex[:8]}", storage=storage)
    trial = study.ask()
    lr = trial.suggest_float("lr", 1e-5, 1.0, log=True)
    kind = trial.suggest_categorical("optimizer", ["sgd", "adam\tw"])
    values = {1: 0.5, 2: float("inf"), 3: float("-inf"), 4: float("nan"), 5: 1e-300}
    for step, value in values.items():
        trial.report(value, step)
    awkward = "tab\there, newline\nthere, back\\slash, quote ' \" and ünïcode"
    trial.set_user_attr("note", awkward)
    trial.set_user_attr("history", [0.5, None, {"a": 1}])
    storage.flush(trial._trial_id)  # written: the note is in the database now
    trial.set_user_attr("note", awkward + "!")  # set again: replaces it
    study._storage.set_trial_system_attr(trial._trial_id, "worker", "host:1")
    study.tell(trial, float("inf"))
    stored = optuna.storages.RDBStorage(url).get_trial(trial._trial_id)
    assert stored.params == {"lr": lr, "optimizer": kind}
    assert stored.intermediate_values[1] == 0.5 and stored.intermediate_values[5] == 1e-300
    assert stored.intermediate_values[2] == float("inf")
    assert stored.intermediate_values[3] == float("-inf")
    assert stored.intermediate_values[4] != stored.intermediate_values[4]  # NaN
    assert stored.user_attrs == {"note": awkward + "!", "history": [0.5, None, {"a": 1}]}
    assert stored.system_attrs["worker"] == "host:1"
    assert (stored.state, stored.value) == (optuna.trial.TrialState.COMPLETE, float("inf"))
    # Another worker reads it with the write-behind storage's own loader: as Optuna reads it.
    pruned = study.ask()
    pruned.suggest_int("width", 4, 64, log=True)
    pruned.report(0.75, 0)
    study.tell(pruned, state=optuna.trial.TrialState.PRUNED)
    running = study.ask()
    running.set_user_attr("note", "still going")
    storage.flush(running._trial_id)
    study.enqueue_trial({"lr": 0.01})
    ids = [t._trial_id for t in optuna.storages.RDBStorage(url).get_all_trials(study._study_id)]
    assert len(ids) == 4
    other = open_storage(url)
    with _create_scoped_session(other._backend.scoped_session) as session:
        loaded = load_trials(session, list(reversed(ids)))
    expected = other._backend._get_trials(study._study_id, None, set(), -1)
    assert [t._trial_id for t in loaded] == sorted(ids)
    for ours, optunas in zip(loaded, expected, strict=True):
        nan_free = {k: v for k, v in optunas.intermediate_values.items() if v == v}
        assert {k: v for k, v in ours.intermediate_values.items() if v == v} == nan_free
        ours.intermediate_values = optunas.intermediate_values  # NaN != NaN; compared above
        assert ours == optunas
        assert list(ours.params) == list(optunas.params)


def _open_at_once(url: str, together: multiprocessing.synchronize.Barrier,
                  results: multiprocessing.queues.Queue) -> None:
    """One of several commands started together on an empty database: open its storage."""
    together.wait()
    try:
        open_storage(url)
        results.put("opened")
    except Exception as exc:  # the line a user would see
        results.put(f"{type(exc).__name__}: {exc}")


@pytest.mark.parametrize("kind", ["sqlite", "postgres", "mariadb"])
def test_commands_started_together_on_an_empty_database_all_open_it(kind, tmp_path):
    context = multiprocessing.get_context("spawn")
    for attempt in range(3):  # each a new, empty database: the race is at its creation
        with contextlib.ExitStack() as stack:
            url = f"sqlite:///{tmp_path / f'{attempt}.db'}" if kind == "sqlite" else \
                stack.enter_context(contextlib.contextmanager(_fresh_database)(kind))
            together, results = context.Barrier(3), context.Queue()
            openers = [context.Process(target=_open_at_once, args=(url, together, results))
                       for _ in range(3)]
            for opener in openers:
                opener.start()
            outcomes = [results.get(timeout=120) for _ in openers]
            for opener in openers:
                opener.join(60)
            assert outcomes == ["opened"] * 3


def _drop(kind: str, url: str) -> None:
    """The study's database gone, as an operator's mistake or a lost server leaves it."""
    if kind == "sqlite":  # a deleted file stays usable to its open connections: drop tables
        import sqlite3

        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as db:
            for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'"):
                db.execute(f"DROP TABLE {table}")
            db.commit()
        return
    name = url.rsplit("/", 1)[1]
    if kind == "postgres":
        import psycopg

        with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres",
                             autocommit=True) as admin:
            admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    else:
        import pymysql

        with pymysql.connect(host="127.0.0.1", user="root", autocommit=True) as admin:
            admin.cursor().execute(f"DROP DATABASE {name}")


# Workers on one server: what a worker or the parent does with a lost storage is the same for
# every kind of database.
@pytest.mark.parametrize(("kind", "workers"), [("sqlite", 1), ("postgres", 1), ("mariadb", 1),
                                               ("postgres", 2)])
def test_a_database_dropped_mid_search_is_one_line_naming_the_storage(
        kind, workers, write_study, tmp_path, monkeypatch):
    """Dropped once a trial finished, at a point the search reaches for sure (the driver's
    round in one process, the parent's progress poll with workers): one line, exit 1."""
    from hpsearch.search import driver
    from hpsearch.search import run as search_run

    with contextlib.ExitStack() as stack:
        url = f"sqlite:///{tmp_path / 'lost.db'}" if kind == "sqlite" else \
            stack.enter_context(contextlib.contextmanager(_fresh_database)(kind))
        dropped = []

        def drop_once(finished: bool) -> None:
            if finished and not dropped:
                dropped.append(True)
                _drop(kind, url)

        if workers == 1:
            end_round = driver.SearchDriver.end_round

            def ending(self, outcomes):
                ended = end_round(self, outcomes)
                drop_once(ended)
                return ended

            monkeypatch.setattr(driver.SearchDriver, "end_round", ending)
        else:
            poll = search_run._ProgressReporter.__call__

            def polled(self, *args):
                poll(self, *args)
                drop_once(self.last is not None and self.last.finished > 0)

            monkeypatch.setattr(search_run._ProgressReporter, "__call__", polled)
        result = run("optimize", "--study", str(write_study()), "--trials", "2000",
                     "--workers", str(workers), "--storage", url)
        assert dropped
        assert result.exit_code == 1, result.output
        lines = result.output.strip().splitlines()
        assert lines[-1].startswith(f"Error: lost the storage {mask_url(url)}: "), lines
        assert "Traceback" not in result.output
        assert not any(line.startswith("Error") for line in lines[:-1])
