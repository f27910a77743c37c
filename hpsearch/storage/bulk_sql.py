"""The write-behind storage's statements over Optuna's RDB tables, in bulk.

Core statements on the tables, not Optuna's ORM and its per-record helpers (each looks the trial
up again): a write-behind storage writes many trials' records at once, and the ORM's unit of
work costs several times the statements themselves. Rows are stored as the ORM would store them,
so Optuna reads them back as its own.

A function that takes `sessions` (an RDB storage's `scoped_session`) is one transaction of its
own; one that takes a `session` runs in the caller's transaction.
"""

from __future__ import annotations

import datetime
import enum
import json
import math
import time
from collections.abc import Callable, Collection, Container, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import optuna
import sqlalchemy
from optuna import distributions
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import orm

WRITE_ATTEMPTS = 5
_T = TypeVar("_T")


@dataclass
class Records:
    """What one trial has to write: params, intermediate values, user and system attrs."""

    params: list[tuple[str, float, distributions.BaseDistribution]] = field(
        default_factory=list)
    intermediate_values: dict[int, float] = field(default_factory=dict)
    user_attrs: dict[str, Any] = field(default_factory=dict)
    system_attrs: dict[str, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.params or self.intermediate_values or self.user_attrs
                    or self.system_attrs)


def retrying(write: Callable[[], _T]) -> _T:
    """`write()`, again after a short wait when the database says to retry (a deadlock
    between workers on MySQL, a lock timeout)."""
    for attempt in range(WRITE_ATTEMPTS - 1):
        try:
            return write()
        except optuna.exceptions.StorageInternalError as exc:
            if not _is_transient(exc.__cause__):
                raise
            time.sleep(0.05 * 2**attempt)
    return write()


def _is_transient(error: BaseException | None) -> bool:
    """A failure the database says to retry: a deadlock or lock timeout (MySQL 1213/1205,
    PostgreSQL 40P01/40001), or SQLite still locked after its busy timeout."""
    driver_error = getattr(error, "orig", None)
    code = driver_error.args[0] if driver_error is not None and driver_error.args else None
    return (code in (1205, 1213)
            or getattr(driver_error, "sqlstate", None) in ("40P01", "40001")
            or "database is locked" in str(driver_error))


def create_running_trials(sessions: orm.scoped_session, study_id: int,
                          count: int) -> list[FrozenTrial]:
    """`count` (at least one) new RUNNING trials of the study, numbered as Optuna numbers
    them, each with a heartbeat, in one transaction (retried)."""

    def create() -> list[FrozenTrial]:
        studies, trials = models.StudyModel.__table__, models.TrialModel.__table__
        with _create_scoped_session(sessions) as session:
            # Numbers are counted, so creators of the study's trials take turns (Optuna
            # locks the study row for one trial the same way).
            if session.execute(sqlalchemy.select(studies.c.study_id)
                               .where(studies.c.study_id == study_id)
                               .with_for_update()).first() is None:
                raise KeyError(models.NOT_FOUND_MSG)
            started = datetime.datetime.now()
            row = {"study_id": study_id, "number": None, "state": TrialState.RUNNING,
                   "datetime_start": stored_time(started)}
            if session.get_bind().dialect.insert_executemany_returning:
                # One statement for all of them, which returns their ids (SQLAlchemy's
                # batched INSERT .. RETURNING): a round trip, not one per trial. The rows
                # are alike, so which id is whose is only a matter of order.
                ids = sorted(session.execute(
                    sqlalchemy.insert(trials).returning(trials.c.trial_id),
                    [row] * count).scalars())
            else:  # MySQL has no INSERT .. RETURNING
                insert = sqlalchemy.insert(trials).values(**row)
                ids = [session.execute(insert).inserted_primary_key[0]
                       for _ in range(count)]
            # As Optuna numbers a trial: the study's trials created before it.
            first = session.execute(
                sqlalchemy.select(sqlalchemy.func.count(trials.c.trial_id))
                .where(trials.c.study_id == study_id, trials.c.trial_id < ids[0])
            ).scalar_one()
            session.execute(
                sqlalchemy.update(trials)
                .where(trials.c.trial_id == sqlalchemy.bindparam("created_id"))
                .values(number=sqlalchemy.bindparam("created_number")),
                [{"created_id": trial_id, "created_number": first + offset}
                 for offset, trial_id in enumerate(ids)])
            now = session.execute(sqlalchemy.func.now()).scalar()  # the stale check's clock
            _insert(session, models.TrialHeartbeatModel,
                    [{"trial_id": trial_id, "heartbeat": now} for trial_id in ids])
            return [FrozenTrial(number=first + offset, state=TrialState.RUNNING, value=None,
                                values=None, datetime_start=started, datetime_complete=None,
                                params={}, distributions={}, user_attrs={}, system_attrs={},
                                intermediate_values={}, trial_id=trial_id)
                    for offset, trial_id in enumerate(ids)]

    return retrying(create)


def failed_among(session: orm.Session, trial_ids: Collection[int]) -> set[int]:
    """Those of `trial_ids` (at least one) that are FAILED in the database.

    The failed trials of their id range, not a lookup of every id: a query SQLAlchemy compiles
    once, where an IN of a cohort's ids is rendered anew for each write."""
    trial = models.TrialModel
    failed = session.execute(
        sqlalchemy.select(trial.trial_id).where(
            trial.trial_id.between(min(trial_ids), max(trial_ids)),
            trial.state == TrialState.FAIL)).scalars()
    return set(failed) & set(trial_ids)


def write_records(session: orm.Session, records: Sequence[tuple[int, Records]],
                  ends: Mapping[int, tuple[TrialState, Sequence[float] | None,
                                           datetime.datetime]],
                  stored_attrs: Mapping[int, Container[tuple[str, str]]]) -> None:
    """Write each (trial id, records) of `records`, and end the trials of `ends` (their
    state, values and completion time).

    `stored_attrs` has the attrs, as ("user_attrs" or "system_attrs", key), that a trial's
    rows may hold already: those are deleted before they are written again (an attr set again
    replaces the stored one). Of a trial missing from it, any may be held."""
    _insert(session, models.TrialParamModel, [
        {"trial_id": trial_id, "param_name": name, "param_value": internal,
         "distribution_json": distributions.distribution_to_json(distribution)}
        for trial_id, pending in records
        for name, internal, distribution in pending.params])
    _insert_values(session, models.TrialIntermediateValueModel, _INTERMEDIATE_COLUMNS, [
        _intermediate_row(trial_id, step, value)
        for trial_id, pending in records
        for step, value in pending.intermediate_values.items()])
    for model, kind in ((models.TrialUserAttributeModel, "user_attrs"),
                        (models.TrialSystemAttributeModel, "system_attrs")):
        for trial_id, pending in records:
            # Only the attrs the database may hold: most are written once (a statement per
            # trial and kind saved, on PostgreSQL a round trip each).
            stored = stored_attrs.get(trial_id)
            again = [key for key in getattr(pending, kind)
                     if stored is None or (kind, key) in stored]
            if again:
                session.execute(sqlalchemy.delete(model).where(
                    model.trial_id == trial_id, model.key.in_(again)))
        _insert(session, model, [
            {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
            for trial_id, pending in records
            for key, value in getattr(pending, kind).items()])
    if ends:  # one statement for all of them
        trials = models.TrialModel.__table__
        session.execute(
            sqlalchemy.update(trials)
            .where(trials.c.trial_id == sqlalchemy.bindparam("ended_id"))
            .values(state=sqlalchemy.bindparam("ended_state"),
                    datetime_complete=sqlalchemy.bindparam("ended_at")),
            [{"ended_id": trial_id, "ended_state": state, "ended_at": stored_time(completed)}
             for trial_id, (state, _, completed) in ends.items()])
    _insert(session, models.TrialValueModel, [
        _value_row(trial_id, objective, value)
        for trial_id, (_, values, _) in ends.items()
        for objective, value in enumerate(values or [])])


def beat(sessions: orm.scoped_session, trial_ids: Sequence[int]) -> None:
    """A heartbeat now for each of the trials, in one transaction, by the database's clock
    (as Optuna's stale check reads it)."""
    heartbeat = models.TrialHeartbeatModel
    with _create_scoped_session(sessions, True) as session:
        now = session.execute(sqlalchemy.func.now()).scalar()
        beating = set(session.scalars(sqlalchemy.select(heartbeat.trial_id)
                                      .where(heartbeat.trial_id.in_(list(trial_ids)))))
        if beating:
            session.execute(sqlalchemy.update(heartbeat)
                            .where(heartbeat.trial_id.in_(beating)).values(heartbeat=now))
        _insert(session, heartbeat, [{"trial_id": trial_id, "heartbeat": now}
                                     for trial_id in trial_ids if trial_id not in beating])


def count_states(sessions: orm.scoped_session, study_id: int) -> dict[TrialState, int]:
    """How many of the study's trials are in each state, in one COUNT query."""
    trial = models.TrialModel
    with _create_scoped_session(sessions) as session:
        rows = session.execute(
            sqlalchemy.select(trial.state, sqlalchemy.func.count())
            .where(trial.study_id == study_id)
            .group_by(trial.state)
        ).all()
        return {state: count for state, count in rows}


def running_without_heartbeat(sessions: orm.scoped_session, study_id: int) -> list[int]:
    """Ids of the study's RUNNING trials that have no heartbeat."""
    trial = models.TrialModel
    with _create_scoped_session(sessions) as session:
        return list(session.scalars(
            sqlalchemy.select(trial.trial_id)
            .outerjoin(models.TrialHeartbeatModel)
            .where(trial.study_id == study_id, trial.state == TrialState.RUNNING,
                   models.TrialHeartbeatModel.trial_heartbeat_id.is_(None))
        ))


def _insert(session: orm.Session, model: Any, rows: list[dict[str, Any]]) -> None:
    """Insert `rows` (all with the same keys) into `model`'s table in the session's
    transaction (see `_insert_values`). Values are what the ORM would store: an enum column
    takes the member's name."""
    if not rows:
        return
    values = [tuple(row.values()) for row in rows]
    # Only the enum columns (found on the first row: rows hold the same kinds of values) are
    # converted, column by column.
    enums = [i for i, value in enumerate(values[0]) if isinstance(value, enum.Enum)]
    if enums:
        by_column = list(zip(*values, strict=True))
        for i in enums:
            by_column[i] = [v.name if isinstance(v, enum.Enum) else v for v in by_column[i]]
        values = list(zip(*by_column, strict=True))
    _insert_values(session, model, list(rows[0]), values)


def _insert_values(session: orm.Session, model: Any, columns: list[str],
                   values: list[tuple[Any, ...]]) -> None:
    """Insert `values` (tuples of `columns`, as stored: an enum by its name) into `model`'s
    table in the session's transaction.

    Into the table, not the ORM model, and with the driver's own bulk insert: a write has
    hundreds of rows, and SQLAlchemy prepares each row's parameters in Python, which costs
    more than the database's own work. On PostgreSQL through COPY (psycopg's executemany goes
    row by row); elsewhere one executemany of the INSERT (pymysql sends it as one multi-row
    INSERT). Rows with a date go through SQLAlchemy, which formats dates as each dialect
    stores them."""
    if not values:
        return
    connection = session.connection()
    dialect = connection.dialect
    if dialect.driver == "psycopg":
        with connection.connection.driver_connection.cursor() as cursor, cursor.copy(
                f"COPY {model.__tablename__} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in values:
                copy.write_row(row)
        return
    marker = _PLACEHOLDERS.get(dialect.paramstyle)
    if marker is None or any(isinstance(value, datetime.datetime) for value in values[0]):
        session.execute(sqlalchemy.insert(model.__table__),
                        [dict(zip(columns, row, strict=True)) for row in values])
        return
    quote = dialect.identifier_preparer.quote  # `key` is a reserved word in MySQL
    connection.exec_driver_sql(
        f"INSERT INTO {quote(model.__tablename__)} ({', '.join(map(quote, columns))}) "
        f"VALUES ({', '.join([marker] * len(columns))})", values)


# The positional placeholder of each DBAPI parameter style (sqlite3: qmark; pymysql: pyformat).
_PLACEHOLDERS = {"qmark": "?", "format": "%s", "pyformat": "%s"}


def _value_row(trial_id: int, objective: int, value: float) -> dict[str, Any]:
    stored, kind = models.TrialValueModel.value_to_stored_repr(value)
    return {"trial_id": trial_id, "objective": objective, "value": stored, "value_type": kind}


# A finite intermediate value's type, as an enum column stores it.
_FINITE_STORED = models.TrialIntermediateValueModel.TrialIntermediateValueType.FINITE.name

_INTERMEDIATE_COLUMNS = ["trial_id", "step", "intermediate_value", "intermediate_value_type"]


def _intermediate_row(trial_id: int, step: int, value: float) -> tuple[Any, ...]:
    """A report's row as stored (`_INTERMEDIATE_COLUMNS`): a tuple, not a dict, as a search
    writes one for every trial and epoch."""
    if math.isfinite(value):  # nearly all of them: Optuna's conversion costs more than a write
        return trial_id, step, value, _FINITE_STORED
    stored, kind = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(value)
    return trial_id, step, stored, kind.name


def stored_time(local: datetime.datetime) -> datetime.datetime:
    """A trial's time as Optuna's RDB tables hold it: naive UTC (Optuna's models convert it
    from and to naive local time)."""
    return local.astimezone(datetime.UTC).replace(tzinfo=None)


def local_time(stored: datetime.datetime | None) -> datetime.datetime | None:
    """A stored trial time (naive UTC) as Optuna hands it out: naive local time."""
    if stored is None:
        return None
    return stored.replace(tzinfo=datetime.UTC).astimezone().replace(tzinfo=None)
