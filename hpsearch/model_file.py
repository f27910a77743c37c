"""Model files: a trained run kept to be used later (`hpsearch train --save`, `hpsearch
predict`, `TrainedRun.save`, `hpsearch.api.load_model`).

A model file is one dict of plain data (dicts, lists, strings, numbers) and the model's
weights as tensors, written by `torch.save`; it loads with `torch.load(path,
weights_only=True)`, which unpickles no class:

    format, format_version   "hpsearch-model", 1
    hpsearch_version         the version that wrote it
    study                    the study's config, as a study stores it (`StudyConfig.as_dict`)
    params                   the configuration's parameters (every one the model trained with)
    seed, epochs, train_rows the run's seed, the epochs it trained, the rows it trained on
    refit                    true: trained on the training and validation rows together
    trial, fold              the stored trial it trained again and the fold (or null)
    history                  per epoch: epoch, lr, train_loss, val_loss, val_accuracy
    end_reason, end_detail   how the run ended (completed, diverged, stopped)
    preprocessing            what the training rows went through (`data.Preprocessing`):
                             each input column's kind, fill value and categories; each
                             feature's mean and scale; the class labels, or the target's
                             mean and scale
    state_dict               the model's weights (on the CPU)

Loading it builds the model from the study's config and parameters (a model of the user's
own factory needs that factory importable, as for `hpsearch train --trial`).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

import hpsearch
from hpsearch.config import stored_study_config
from hpsearch.data import CATEGORICAL, CLASSIFICATION, Preprocessing, TableSource, read_table
from hpsearch.errors import DataError
from hpsearch.training import EpochStats, FitResult, TrainedRun, model_for

if TYPE_CHECKING:
    import pandas as pd

FORMAT = "hpsearch-model"
FORMAT_VERSION = 1
PREDICTION = "prediction"  # the predictions' column: a class label, or a target value
PROBABILITY = "probability_"  # classification: one column per class, this prefix + its label


def model_document(run: TrainedRun) -> dict[str, Any]:
    """What a model file holds for `run` (see the module docstring)."""
    result = run.result
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "hpsearch_version": hpsearch.__version__,
        "study": run.config.as_dict(), "params": dict(run.params), "seed": run.seed,
        "epochs": len(result.history), "train_rows": run.train_rows, "refit": run.refit,
        "trial": run.trial, "fold": run.fold,
        "history": [vars(stats).copy() for stats in result.history],
        "end_reason": result.end_reason, "end_detail": result.detail,
        "preprocessing": run.preprocessing.as_dict(),
        "state_dict": {name: tensor.detach().cpu()
                       for name, tensor in run.model.state_dict().items()},
    }


def save_model(run: TrainedRun, path: str | os.PathLike) -> Path:
    """Write `run`'s model file to `path` (its folder must exist; a file there is
    replaced)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise DataError(f"cannot write the model file {path}: folder {path.parent} does not "
                        "exist")
    torch.save(model_document(run), path)
    return path


def load_model(path: str | os.PathLike) -> TrainedRun:
    """The run a model file holds, ready to `predict` (its model in eval mode, on the CPU)."""
    where = f"model file {os.fspath(path)}"
    try:
        document = torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise DataError(f"{where} does not exist") from None
    except IsADirectoryError:
        raise DataError(f"{where} is a folder, not a model file") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError):
        raise DataError(f"{where} is not an hpsearch model file (it does not load with "
                        "torch.load(path, weights_only=True))") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise DataError(f"{where} is not an hpsearch model file (written by torch.save, but "
                        "not by hpsearch train --save)")
    if document.get("format_version", 0) > FORMAT_VERSION:
        raise DataError(f"{where} has format {document['format_version']}, newer than this "
                        f"hpsearch reads ({FORMAT_VERSION}): upgrade hpsearch")
    config = stored_study_config(document["study"])
    preprocessing = Preprocessing.from_dict(document["preprocessing"])
    params = dict(document["params"])
    model = model_for(config, preprocessing, params)
    model.load_state_dict(document["state_dict"])
    model.eval()
    result = FitResult([EpochStats(**stats) for stats in document["history"]],
                       document["end_reason"], document["end_detail"])
    return TrainedRun(result, model, config, params, document["seed"], preprocessing,
                      document["train_rows"], document["refit"], document["trial"],
                      document["fold"])


def predict(run: TrainedRun, rows: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    """`run`'s predictions for `rows`: a DataFrame, or a CSV/TSV/Parquet file, with the
    model's input columns (any others, the target's included, are ignored), encoded as the
    training rows were. Classification: the predicted label (`prediction`, the labels as in
    the data) and each class's probability (`probability_<label>`); regression: the
    prediction in the target's own units. One row per row of `rows`, in order (a DataFrame's
    index is kept)."""
    import pandas as pd

    preprocessing = run.preprocessing
    if isinstance(rows, pd.DataFrame):
        frame, where = rows, ""
    else:
        frame, where = _read_rows(run, rows), f"{os.fspath(rows)}: "
    features = torch.from_numpy(preprocessing.transform(frame, where))
    model = run.model.eval()
    device = next(iter(model.parameters()), features).device
    with torch.no_grad():
        outputs = model(features.to(device)).cpu()
    if preprocessing.task != CLASSIFICATION:
        values = preprocessing.targets(outputs.double().numpy())
        return pd.DataFrame({PREDICTION: values}, index=frame.index)
    probabilities = torch.softmax(outputs.double(), dim=1).numpy()
    labels = np.empty(len(preprocessing.labels), dtype=object)
    labels[:] = list(preprocessing.labels)
    # Integer labels come back as integers, text labels as text.
    predicted = pd.DataFrame({PREDICTION: labels[probabilities.argmax(axis=1)]},
                             index=frame.index).infer_objects()
    for i, label in enumerate(preprocessing.labels):
        predicted[f"{PROBABILITY}{label}"] = probabilities[:, i]
    return predicted


def _read_rows(run: TrainedRun, path: str | os.PathLike) -> pd.DataFrame:
    """A file of rows to predict, read as the study read its own file (its separator, if it
    set one), the category columns as text."""
    table = run.config.data.table
    source = TableSource(os.fspath(path), target="",
                         separator=table.separator if table is not None else None)
    text = [c.name for c in run.preprocessing.columns if c.kind == CATEGORICAL]
    frame = read_table(source, text_columns=text)
    if len(frame) == 0:
        raise DataError(f"{os.fspath(path)}: the file has a header but no rows")
    return frame
