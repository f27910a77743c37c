"""Reading trials from Optuna's RDB tables with plain queries, as Optuna's RDB storage builds
them.

Optuna's loader builds an ORM object for every record (a finished trial has one per epoch it
reported), and a worker reads every trial the other workers ran: plain queries, one per table,
build the same trials for less.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator
from typing import Any

import sqlalchemy
from optuna import distributions
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial
from sqlalchemy import orm

from hpsearch.storage.bulk_sql import local_time

_FINITE = models.TrialIntermediateValueModel.TrialIntermediateValueType.FINITE


def changed_trial_ids(session: orm.Session, study_id: int, after: int,
                      unfinished: Collection[int]) -> list[int]:
    """Ids of the study's trials that may have changed since they were read: those after
    trial id `after`, and those of `unfinished`."""
    trial = models.TrialModel
    return list(session.scalars(
        sqlalchemy.select(trial.trial_id).where(
            trial.study_id == study_id,
            sqlalchemy.or_(trial.trial_id > after, trial.trial_id.in_(unfinished)))))


def count_trials(session: orm.Session, study_id: int, up_to: int) -> int:
    """How many trials the study has with ids up to `up_to`."""
    trial = models.TrialModel
    return session.scalar(sqlalchemy.select(sqlalchemy.func.count(trial.trial_id)).where(
        trial.study_id == study_id, trial.trial_id <= up_to))


def load_trials(session: orm.Session, trial_ids: list[int]) -> list[FrozenTrial]:
    """The trials with these ids, in id order, read with one plain query per table."""
    trials: dict[int, dict[str, Any]] = {}
    table = models.TrialModel.__table__
    for chunk in _chunks(trial_ids):
        for row in session.execute(sqlalchemy.select(
                table.c.trial_id, table.c.number, table.c.state, table.c.datetime_start,
                table.c.datetime_complete).where(table.c.trial_id.in_(chunk))):
            trials[row.trial_id] = {
                "number": row.number, "state": row.state,
                "datetime_start": local_time(row.datetime_start),
                "datetime_complete": local_time(row.datetime_complete), "values": None,
                "params": {},
                "distributions": {}, "user_attrs": {}, "system_attrs": {},
                "intermediate_values": {}}

    def rows(model: Any, *columns: str, order: str | None = None) -> Iterator[Any]:
        table = model.__table__
        for chunk in _chunks(list(trials)):
            query = sqlalchemy.select(table.c.trial_id, *(table.c[c] for c in columns)).where(
                table.c.trial_id.in_(chunk))
            yield from session.execute(
                query.order_by(table.c[order]) if order is not None else query)

    for trial_id, name, value, distribution_json in rows(
            models.TrialParamModel, "param_name", "param_value", "distribution_json",
            order="param_id"):
        distribution = distributions.json_to_distribution(distribution_json)
        trials[trial_id]["params"][name] = distribution.to_external_repr(value)
        trials[trial_id]["distributions"][name] = distribution
    for trial_id, objective, value, kind in rows(models.TrialValueModel, "objective", "value",
                                                 "value_type", order="objective"):
        values = trials[trial_id]["values"] = trials[trial_id]["values"] or []
        values.insert(objective, models.TrialValueModel.stored_repr_to_value(value, kind))
    for model, kind in ((models.TrialUserAttributeModel, "user_attrs"),
                        (models.TrialSystemAttributeModel, "system_attrs")):
        for trial_id, key, value_json in rows(model, "key", "value_json"):
            trials[trial_id][kind][key] = json.loads(value_json)
    to_value = models.TrialIntermediateValueModel.stored_repr_to_intermediate_value
    for trial_id, step, value, kind in rows(models.TrialIntermediateValueModel, "step",
                                            "intermediate_value", "intermediate_value_type"):
        trials[trial_id]["intermediate_values"][step] = value if kind == _FINITE else \
            to_value(value, kind)
    return [FrozenTrial(trial_id=trial_id, value=None, **fields)
            for trial_id, fields in sorted(trials.items())]


def _chunks(ids: list[int], size: int = 500) -> Iterator[list[int]]:
    """`ids` in pieces small enough for an IN (SQLite's old limit: 999 bound values)."""
    for start in range(0, len(ids), size):
        yield ids[start:start + size]
