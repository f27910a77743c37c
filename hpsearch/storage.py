"""Storage URLs: which one (`--storage` > $HPSEARCH_STORAGE > sqlite:///hpsearch.db), how to
open it with settings that suit many readers and writers, and how to print it without its
password.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import optuna
import sqlalchemy.exc
from sqlalchemy.engine import URL, make_url

from hpsearch.errors import StorageError

DEFAULT_STORAGE = "sqlite:///hpsearch.db"
STORAGE_ENV = "HPSEARCH_STORAGE"
IN_MEMORY = "memory"  # an Optuna in-memory storage: nothing is persisted

# Seconds a SQLite writer waits for a lock before failing, and a network database for a
# connection: a dashboard reading the file must not fail the search, and a wrong host must
# fail fast.
SQLITE_BUSY_TIMEOUT_S = 60
CONNECT_TIMEOUT_S = 5

DRIVER_EXTRAS = {"psycopg": "postgres", "psycopg2": "postgres", "pymysql": "mysql"}


def resolve_storage_url(url: str | None = None) -> str:
    return url or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***, for every message and listing."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        return url if "@" not in url else "<storage URL hidden: it may contain a password>"


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """Open (creating if needed) the Optuna storage at `url`, or raise one StorageError."""
    if url == IN_MEMORY:
        return optuna.storages.InMemoryStorage()
    parsed = _parse(url)
    engine_kwargs: dict = {}
    if parsed.get_backend_name() == "sqlite":
        _prepare_sqlite(parsed)
        engine_kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
    elif parsed.get_backend_name() in ("postgresql", "mysql", "mariadb"):
        engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
        engine_kwargs["pool_pre_ping"] = True
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except ImportError as exc:
        # Optuna re-raises the driver's ModuleNotFoundError as a generic ImportError.
        missing = exc if isinstance(exc, ModuleNotFoundError) else exc.__cause__
        raise _missing_driver(url, getattr(missing, "name", None)) from None
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError,
            RuntimeError, ValueError) as exc:
        raise StorageError(f"cannot open storage {mask_url(url)}: "
                           f"{_first_line(exc, parsed)}") from None


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
    return parsed


def _missing_driver(url: str, module: str | None) -> StorageError:
    extra = DRIVER_EXTRAS.get(module or "", "")
    hint = f"; install it with: pip install 'hpsearch[{extra}]'" if extra else ""
    return StorageError(f"storage {mask_url(url)}: its database driver {module!r} is not "
                        f"installed{hint}")


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


def _first_line(exc: BaseException, parsed: URL) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    if parsed.password:
        line = line.replace(str(parsed.password), "***")
    return line
