"""Storage URLs: which one (`--storage` > $HPSEARCH_STORAGE > sqlite:///hpsearch.db), how to
open it with settings that suit many readers and writers, and how to print it without its
password.

Every storage a search opens has heartbeats: while a trial runs, its worker records a heartbeat
every `heartbeat_s` seconds; a RUNNING trial whose heartbeat is older than `GRACE_BEATS`
intervals belongs to a dead worker (killed, crashed, its machine gone). The next worker that
starts a trial marks it FAIL and queues a retry with the same parameters (at most
`MAX_RETRIES` times for one configuration, so that a configuration that kills its worker every
time cannot stall the search).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import sqlite3
import time
import urllib.parse
import warnings
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import optuna.storages._rdb.storage as optuna_rdb
import sqlalchemy
import sqlalchemy.exc
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL, make_url

from hpsearch.errors import StorageError
from hpsearch.records import ATTR_END_DETAIL, ATTR_END_REASON
from hpsearch.storage.write_behind import WriteBehindStorage
from hpsearch.storage.write_through import WriteThroughStorage

DEFAULT_STORAGE = "sqlite:///hpsearch.db"
STORAGE_ENV = "HPSEARCH_STORAGE"
IN_MEMORY = "memory"  # an Optuna in-memory storage: nothing is persisted

# Seconds a SQLite writer waits for a lock before failing, and a network database for a
# connection: a dashboard reading the file must not fail the search, and a wrong host must
# fail fast.
SQLITE_BUSY_TIMEOUT_S = 60
CONNECT_TIMEOUT_S = 5

# Heartbeats: a stale trial is found GRACE_BEATS * heartbeat_s after its worker died. Several
# beats of grace, because a busy machine can delay one beat; tests use a 1 s interval.
HEARTBEAT_S = 10
GRACE_BEATS = 3
MAX_RETRIES = 3
# Tries at opening a storage whose tables another process is creating at the same moment.
CREATE_ATTEMPTS = 5

# The driver module a URL names -> the extra that installs a driver, and the URL to use then.
DRIVER_EXTRAS = {"psycopg": "postgres", "psycopg2": "postgres", "pymysql": "mysql",
                 "MySQLdb": "mysql"}
SUPPORTED_URLS = {"postgres": "postgresql+psycopg://user:password@host/db",
                  "mysql": "mysql+pymysql://user:password@host/db"}


def resolve_storage_url(url: str | None = None) -> str:
    return url or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE


HIDDEN_URL = "<storage URL hidden: it may contain a password>"


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***, for every message and listing."""
    try:
        parsed = make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        return url if "@" not in url else HIDDEN_URL
    # An unescaped @ in a password leaves part of the password in the host: hide it all.
    if "@" in (parsed.host or ""):
        return HIDDEN_URL
    return parsed.render_as_string(hide_password=True)


def open_storage(url: str, write_behind: bool = True, heartbeat_s: int = HEARTBEAT_S,
                 read_only: bool = False, must_exist: bool = False
                 ) -> optuna.storages.BaseStorage:
    """Open (creating if needed) the Optuna storage at `url`, or raise one StorageError.

    Searches get a `WriteBehindStorage` (their running trials kept in memory, written in
    batches); `write_behind=False` gives a `WriteThroughStorage`, for readers such as the
    dashboard that should see every commit at once and write straight to the database. Both
    record heartbeats every `heartbeat_s` seconds while `study.optimize` runs a trial (see the
    module's docstring).

    `must_exist` is for the commands that open a study already stored (the dashboard): a
    SQLite file must exist and hold Optuna's tables, so that a mistyped path is an error
    instead of a new empty database left behind (nor are Optuna's tables added to another
    program's file). `read_only` is for the commands that only read (listings, reports) and
    implies `must_exist`: a SQLite file is opened read-only, so a file the user may not write
    can be read. Other databases are opened as usual: opening them creates no file."""
    if url == IN_MEMORY:
        return optuna.storages.InMemoryStorage()
    parsed = _parse(url)
    shown = mask_url(url)
    engine_kwargs: dict = {}
    if parsed.get_backend_name() == "sqlite" and (read_only or must_exist):
        path = _existing_sqlite(parsed, shown)
        if read_only:  # SQLite's own mode=ro: no statement can write, whatever the permissions
            url = f"sqlite:///file:{_uri_path(path, decoded_by_sqlalchemy=True)}?mode=ro&uri=true"
    if parsed.get_backend_name() == "sqlite" and not read_only:
        _prepare_sqlite(parsed)
    if parsed.get_backend_name() == "sqlite":
        engine_kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
    elif parsed.get_backend_name() in ("postgresql", "mysql", "mariadb"):
        engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
        if parsed.get_backend_name() == "postgresql":
            engine_kwargs["connect_args"]["options"] = _postgres_options(parsed)
        engine_kwargs["pool_pre_ping"] = True
    try:
        rdb = _created_once(lambda: _rdb_storage(url, engine_kwargs, heartbeat_s))
    except ImportError as exc:
        # Optuna re-raises the driver's ModuleNotFoundError as a generic ImportError.
        missing = exc if isinstance(exc, ModuleNotFoundError) else exc.__cause__
        raise _missing_driver(url, getattr(missing, "name", None)) from None
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError,
            RuntimeError, ValueError) as exc:
        raise StorageError(f"cannot open storage {shown}: {_first_line(exc, parsed)}"
                           ) from None
    if parsed.get_backend_name() == "sqlite" and not read_only:
        _relax_sqlite_sync(rdb)
    _opened.add(rdb)
    return WriteBehindStorage(rdb) if write_behind else WriteThroughStorage(rdb)


def reopen_storage(url: str, heartbeat_s: int = HEARTBEAT_S) -> optuna.storages.BaseStorage:
    """`open_storage` for a worker joining a search: the parent opened this storage and created
    the study before starting it, so a storage it cannot open was lost meanwhile (dropped,
    deleted, the server gone) and is said so, in the words of a loss mid-run."""
    try:
        return open_storage(url, heartbeat_s=heartbeat_s)
    except StorageError as exc:
        reason = str(exc).removeprefix(f"cannot open storage {mask_url(url)}: ")
        raise StorageError(f"lost the storage {mask_url(url)}: {reason}") from None


def _rdb_storage(url: str, engine_kwargs: dict, heartbeat_s: int) -> optuna.storages.RDBStorage:
    with warnings.catch_warnings():
        # Heartbeats are "experimental" in Optuna since 2.9; hpsearch relies on them.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        rdb = optuna.storages.RDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_s,
            grace_period=GRACE_BEATS * heartbeat_s,
            heartbeat_stale_trial_callback=_Retry(max_retry=MAX_RETRIES),
            skip_compatibility_check=True,  # checked below, as Optuna would
        )
        _check_schema(rdb)
    return rdb


class _Retry(optuna.storages.RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a dead worker's trial (its parameters and user attrs, queued again),
    without the failed trial's end: the retry's own end is written when it ends."""

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        trial = copy.copy(trial)
        trial.user_attrs = {key: value for key, value in trial.user_attrs.items()
                            if key not in (ATTR_END_REASON, ATTR_END_DETAIL)}
        super().__call__(study, trial)


def _created_once(open_rdb: Callable[[], optuna.storages.RDBStorage],
                  attempts: int = CREATE_ATTEMPTS) -> optuna.storages.RDBStorage:
    """`open_rdb()`, again when another process created the tables (or their version row) at
    the same moment: commands started together on an empty database race to create them, and
    the loser's CREATE fails with "already exists". Opened again, the tables are there."""
    for attempt in range(attempts - 1):
        try:
            return open_rdb()
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
            if not _created_meanwhile(exc):
                raise
            time.sleep(0.05 * (attempt + 1))
    return open_rdb()


def _created_meanwhile(exc: BaseException) -> bool:
    """Whether creating the tables failed because another process made them first (SQLite,
    PostgreSQL and MySQL each say so in their own words)."""
    text = str(getattr(exc, "orig", None) or exc)
    return ("already exists" in text or "UNIQUE constraint failed" in text
            or "duplicate" in text.lower())


def _check_schema(rdb: optuna.storages.RDBStorage) -> None:
    """Optuna's check that the database's tables are of the installed Optuna's schema, raising
    its RuntimeError (which says how to upgrade them) if not; the schema's newest revision read
    once per process. Optuna reads it from its migration scripts every time a storage is
    opened, which costs more than opening the rest of the storage, and every search, report
    and benchmark run opens one."""
    manager = rdb._version_manager
    if manager.get_current_version() != _schema_head():
        manager.check_table_schema_compatibility()


@functools.cache
def _schema_head() -> str:
    """The newest revision of the installed Optuna's table schema (its migration scripts'
    head, what Optuna's own check compares with)."""
    folder = Path(optuna_rdb.__file__).parent / "alembic"
    return ScriptDirectory(str(folder)).get_current_head()


def close_storage(storage: optuna.storages.BaseStorage) -> None:
    """Close the storage's database connections (a worker does before it exits)."""
    rdb = getattr(storage, "_backend", storage)
    if isinstance(rdb, optuna.storages.RDBStorage):
        rdb.engine.dispose()


# Every database storage `open_storage` opened in this process and not yet collected.
_opened: weakref.WeakSet[optuna.storages.RDBStorage] = weakref.WeakSet()


def close_open_storages() -> None:
    """Close the connections of every storage this process opened: a process that ends
    without the interpreter's teardown (`hpsearch.fast_exit`) closes them here, so that SQLite
    folds its write-ahead log into the database file as a normal exit would."""
    for rdb in list(_opened):
        with contextlib.suppress(Exception):  # a database already gone: nothing to close
            close_storage(rdb)


def _parse(url: str) -> URL:
    try:
        parsed = make_url(url)
        parsed.get_dialect()
    except sqlalchemy.exc.NoSuchModuleError:  # before ArgumentError: it is a subclass
        raise StorageError(f"storage {mask_url(url)}: unknown database kind "
                           f"{url.split(':', 1)[0]!r}") from None
    except sqlalchemy.exc.ArgumentError:
        raise StorageError(
            f"{mask_url(url)!r} is not a storage URL; expected e.g. {DEFAULT_STORAGE}, "
            "postgresql+psycopg://user@host/db or mysql+pymysql://user@host/db"
        ) from None
    except ValueError as exc:  # e.g. a port that is not a number
        raise StorageError(f"{mask_url(url)!r} is not a storage URL: {exc}") from None
    if "@" in (parsed.host or ""):
        raise StorageError(f"{HIDDEN_URL}: it has an '@' after the user name; write an @, : or "
                           "/ in a password percent-encoded (%40, %3A, %2F)")
    return parsed


def _missing_driver(url: str, module: str | None) -> StorageError:
    extra = DRIVER_EXTRAS.get(module or "", "")
    hint = ""
    if extra:
        hint = f"; install it with: pip install 'hpsearch[{extra}]'"
        if url.split("://", 1)[0] != SUPPORTED_URLS[extra].split("://", 1)[0]:
            hint += f" and use a URL like {SUPPORTED_URLS[extra]}"
    return StorageError(f"storage {mask_url(url)}: its database driver {module!r} is not "
                        f"installed{hint}")


def _relax_sqlite_sync(rdb: optuna.storages.RDBStorage) -> None:
    """synchronous=NORMAL on every connection: in WAL mode a commit then skips its fsync (the
    WAL is synced at checkpoints), which is most of a small transaction's cost. The file can't
    be corrupted by a crash; a power cut may lose the last second of trials' records, which
    the resumable search redoes."""

    @sqlalchemy.event.listens_for(rdb.engine, "connect")
    def _on_connect(connection, _record) -> None:  # type: ignore[no-untyped-def]
        connection.execute("PRAGMA synchronous=NORMAL")

    rdb.engine.dispose()  # connections opened while creating the tables get it too


def _postgres_options(parsed: URL) -> str:
    """synchronous_commit=off for our sessions: a commit then returns before its WAL record is
    flushed to disk, so a cohort search's many small commits do not each wait for the disk
    (on PostgreSQL those waits are a large share of its time). The database can't be
    corrupted; a crash of the server may lose its last fraction of a second of commits, as
    SQLite's synchronous=NORMAL may (see `_relax_sqlite_sync`), which the resumable search
    redoes. Options in the URL are kept."""
    given = parsed.query.get("options", "")
    given = given if isinstance(given, str) else " ".join(given)
    return f"{given} -c synchronous_commit=off".strip()


def _uri_path(path: Path, decoded_by_sqlalchemy: bool = False) -> str:
    """`path` as a SQLite URI wants it: percent-encoded, so that a space, `?`, `#` or `%` in
    it is part of the name. Inside a SQLAlchemy URL it is encoded once more: SQLAlchemy
    decodes the URL's database part before SQLite reads it."""
    encoded = urllib.parse.quote(str(path.resolve()))
    return urllib.parse.quote(encoded, safe="/") if decoded_by_sqlalchemy else encoded


def _existing_sqlite(parsed: URL, shown: str) -> Path:
    """The file of `parsed`, checked to be a SQLite database holding Optuna's tables (read
    without writing: SQLite's mode=ro)."""
    path = Path(parsed.database or "")
    if not parsed.database or parsed.database == ":memory:" or not path.is_file():
        what = "is a folder, not a database file" if path.is_dir() else "no such file"
        raise StorageError(f"cannot open storage {shown}: {what}")
    try:
        with contextlib.closing(sqlite3.connect(
                f"file:{_uri_path(path)}?mode=ro", uri=True,
                timeout=SQLITE_BUSY_TIMEOUT_S)) as connection:
            tables = {row[0] for row in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        raise StorageError(f"cannot open storage {shown}: {exc}") from None
    if "studies" not in tables:
        raise StorageError(f"cannot open storage {shown}: it is not an Optuna storage (it has "
                           "no studies table)")
    return path


def _prepare_sqlite(parsed: URL) -> None:
    """Check the file can be written, and switch it to WAL so that readers (the dashboard,
    reports) never block the search's writes; WAL is a property of the file, set once."""
    if not parsed.database or parsed.database == ":memory:":
        return
    path = Path(parsed.database)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise StorageError(f"cannot open storage sqlite:///{path}: folder {folder} does not "
                           "exist")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise StorageError(f"cannot open storage sqlite:///{path}: {path} is not writable")
    try:
        with sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
    except sqlite3.DatabaseError as exc:
        raise StorageError(f"cannot open storage sqlite:///{path}: {exc}") from None


# What a database that went away (dropped, stopped, unreachable, its file deleted) raises
# anywhere in a search: SQLAlchemy's errors, Optuna's wrapper of them, sqlite3's own.
DATABASE_ERRORS = (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError,
                   sqlite3.Error)


def database_error(exc: BaseException) -> BaseException | None:
    """The database's own error behind `exc`, or None if the chain `exc` was raised from (or
    during) holds none: a bug, not the database. The innermost driver error (what the database
    said) where there is one; Optuna's wrapper and SQLAlchemy's pool errors say little."""
    found: list[BaseException] = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DATABASE_ERRORS):
            found.append(exc)
        exc = exc.__cause__ or exc.__context__
    said = [e for e in found if isinstance(e, (sqlalchemy.exc.DBAPIError, sqlite3.Error))
            and str(getattr(e, "orig", None) or e).strip()]
    return (said or found or [None])[-1]


@contextlib.contextmanager
def storage_errors(url: str) -> Iterator[None]:
    """Turn a database failure inside the block (at any point of a search: a query, a worker's
    write, a progress poll, the summary's reads) into one StorageError that names the storage
    (password masked) and the database's own first line; any other error passes unchanged."""
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:
        cause = None if url == IN_MEMORY else database_error(exc)  # memory: no database
        if cause is None:
            raise
        raise StorageError(f"lost the storage {mask_url(url)}: "
                           f"{_first_line(cause, make_url(url))}") from exc


def _first_line(exc: BaseException, parsed: URL) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    if parsed.password:
        line = line.replace(str(parsed.password), "***")
    return line
