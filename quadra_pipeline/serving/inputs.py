"""Request bodies of MLflow's scoring protocol, checked against the model's signature.

The served model's signature is one unnamed float32 tensor of shape (-1, N) (N: the field
size) and its answer a (-1, 3) float32 tensor, the loss of each action (`ACTIONS` order). A
body is one JSON object with exactly one of MLflow's input fields (its own constants and
message), as `mlflow models serve` reads it:

    {"inputs": [[x1, ..., xN], ...]}                  rows of N numbers (also "instances")
    {"dataframe_split": {"columns": [...], "data": [[...], ...]}}
    {"dataframe_records": [{"c1": x1, ...}, ...]}     (MLflow's own DataFrame parser)

and texts, turned into the model's text features (`model.features.text_features`, the
encoding it was trained with):

    {"inputs": ["a text", ...]}   {"instances": [{"text": "a text"}, ...]}   {"inputs": {"text": [...]}}
    {"dataframe_split": {"columns": ["text"], "data": [["a text"], ...]}}

`text/csv` bodies go through MLflow's CSV parser (a header row, then N numeric columns or one
`text` column). Anything else is a `RequestError` with the HTTP status (400, 413 or 415) and
one line naming the field (`inputs[2][7]: expected a number, got "x" (a string)`), never an
exception that would become a 500.

Numbers must be JSON numbers: no strings, booleans, nulls, NaN or Infinity, nothing outside
float32's range. (MLflow's own server converts "1.5", true and null into 1.5, 1.0 and NaN.)
A valid body of numeric rows takes one NumPy conversion; only a body that fails it, or holds
`true`/`false`, is walked value by value to name the bad field.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: The input fields of MLflow's scoring protocol (mlflow.pyfunc.scoring_server's constants).
from mlflow.pyfunc.scoring_server import (
    CONTENT_TYPE_CSV,
    CONTENT_TYPE_JSON,
    DF_RECORDS,
    DF_SPLIT,
    INPUTS,
    INSTANCES,
    REQUIRED_INPUT_FORMAT,
    SERVING_PARAMS_KEY,
    SUPPORTED_FORMATS,
)

FLOAT32_MAX = float(np.finfo(np.float32).max)
TEXT_COLUMN = "text"
_FORMATS = (INPUTS, INSTANCES, DF_SPLIT, DF_RECORDS)  # a fixed order, for messages


class RequestError(Exception):
    """A request the service refuses: `status` (4xx) and a one-line `message` naming the field."""

    def __init__(self, message: str, status: int = 400, code: str = "BAD_REQUEST") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


@dataclass(frozen=True)
class Batch:
    """What a request asks: (B, N) float32 rows, from numbers or from texts."""

    vectors: np.ndarray
    kind: str  # "vectors" or "texts"
    source: str  # the input field it came from (inputs, instances, dataframe_split, ...)


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{'true' if value else 'false'} (a boolean)"
    if isinstance(value, str):
        text = value if len(value) <= 20 else value[:17] + "..."
        return f"{json.dumps(text)} (a string)"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return "an object"
    return repr(value)


def _no_constants(name: str) -> float:
    raise ValueError(f"{name} is not a number in JSON")


def decode_json(body: bytes) -> Any:
    """The JSON document of a body; `RequestError` naming the line and column otherwise."""
    if not body.strip():
        raise RequestError(f"the request body is empty: {REQUIRED_INPUT_FORMAT}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(f"the request body is not UTF-8 text (byte {exc.start})") from None
    try:
        return json.loads(text, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise RequestError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except ValueError as exc:  # NaN, Infinity
        raise RequestError(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise RequestError("invalid JSON: nested too deeply") from None


def parse_json_request(body: bytes, field_size: int, max_rows: int) -> Batch:
    """Decode and check a JSON request body (see the module's docstring)."""
    document = decode_json(body)
    if not isinstance(document, dict):
        kind = "a list" if isinstance(document, list) else _describe(document)
        raise RequestError(f"{REQUIRED_INPUT_FORMAT}. Received {kind}.")
    fields = [name for name in _FORMATS if name in document]
    if len(fields) != 1:
        received = ", ".join(sorted(str(k) for k in document)) or "none"
        raise RequestError(f"{REQUIRED_INPUT_FORMAT}. Received the fields: {received}.")
    params = document.get(SERVING_PARAMS_KEY)
    if params is not None and not isinstance(params, dict):
        raise RequestError(f"{SERVING_PARAMS_KEY}: expected an object, got {_describe(params)}")
    [field] = fields
    value = document[field]
    # A body of nothing but numbers with no boolean in it takes the fast path; any other is
    # walked value by value (booleans would pass NumPy's conversion as 1.0 and 0.0).
    exact = b"true" in body or b"false" in body
    if field in (INPUTS, INSTANCES):
        return _tensor_input(value, field, field_size, max_rows, exact)
    if field == DF_SPLIT:
        return _dataframe_split(value, field_size, max_rows, exact)
    return _dataframe_records(value, field_size, max_rows)


def parse_csv_request(body: bytes, field_size: int, max_rows: int) -> Batch:
    """A CSV body through MLflow's own CSV parser: a header row, then N numeric columns or one
    `text` column."""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc.scoring_server import parse_csv_input

    if not body.strip():
        raise RequestError("the request body is empty: send a header row and at least one row of CSV")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(f"the request body is not UTF-8 text (byte {exc.start})") from None
    try:
        frame = parse_csv_input(io.StringIO(text))
    except MlflowException as exc:
        raise RequestError(" ".join(str(exc.message).split())[:300]) from None
    columns = [str(c) for c in frame.columns]
    rows = frame.values.tolist()  # Python numbers (NaN for an empty cell) and strings
    return _frame(columns, rows, "csv", field_size, max_rows)


def _check_rows(count: int, field: str, max_rows: int) -> None:
    if count == 0:
        raise RequestError(f"{field}: no rows: send at least one")
    if count > max_rows:
        raise RequestError(f"{field}: {count} rows, more than the {max_rows} a request may hold (QUADRA_SERVING_MAX_ROWS)",
                           status=413, code="PAYLOAD_TOO_LARGE")


def _tensor_input(value: Any, field: str, field_size: int, max_rows: int, exact: bool) -> Batch:
    if isinstance(value, dict):
        if set(value) == {TEXT_COLUMN}:
            return _texts(value[TEXT_COLUMN], f"{field}.{TEXT_COLUMN}", field_size, max_rows, field)
        names = ", ".join(sorted(map(str, value))) or "none"
        raise RequestError(f"{field}: named inputs ({names}) are not in the model's signature, one unnamed float32 "
                           f"tensor of shape (-1, {field_size}): send a list of rows, or {{\"{TEXT_COLUMN}\": [texts]}}")
    if not isinstance(value, list):
        raise RequestError(f"{field}: expected a list of rows of {field_size} numbers (or of texts), got {_describe(value)}")
    _check_rows(len(value), field, max_rows)
    first = value[0]
    if isinstance(first, str):
        return _texts(value, field, field_size, max_rows, field)
    if isinstance(first, dict):
        texts = []
        for i, row in enumerate(value):
            if not isinstance(row, dict) or set(row) != {TEXT_COLUMN}:
                raise RequestError(f"{field}[{i}]: expected {{\"{TEXT_COLUMN}\": \"...\"}} like the first row, got "
                                   f"{_describe(row) if not isinstance(row, dict) else 'the fields ' + ', '.join(map(str, row))}")
            texts.append(row[TEXT_COLUMN])
        return _texts(texts, field, field_size, max_rows, field, suffix=f".{TEXT_COLUMN}")
    return Batch(_numbers(value, field, field_size, exact), "vectors", field)


def _dataframe_split(value: Any, field_size: int, max_rows: int, exact: bool) -> Batch:
    if not isinstance(value, dict):
        raise RequestError(f"{DF_SPLIT}: expected an object with \"data\" (and \"columns\"), got {_describe(value)}")
    unknown = sorted(set(map(str, value)) - {"columns", "data", "index"})
    if unknown:
        raise RequestError(f"{DF_SPLIT}: unknown field(s) {', '.join(unknown)} (expected columns, data, index)")
    data = value.get("data")
    if not isinstance(data, list):
        raise RequestError(f"{DF_SPLIT}.data: expected a list of rows, got {_describe(data)}")
    columns = value.get("columns")
    if columns is not None and (not isinstance(columns, list) or not all(isinstance(c, (str, int)) for c in columns)):
        raise RequestError(f"{DF_SPLIT}.columns: expected a list of column names, got {_describe(columns)}")
    index = value.get("index")
    if index is not None and (not isinstance(index, list) or len(index) != len(data)):
        raise RequestError(f"{DF_SPLIT}.index: expected a list of {len(data)} labels, one per row")
    where = f"{DF_SPLIT}.data"
    _check_rows(len(data), where, max_rows)
    if columns is not None and [str(c) for c in columns] == [TEXT_COLUMN]:
        texts = []
        for i, row in enumerate(data):
            if not isinstance(row, list) or len(row) != 1:
                raise RequestError(f"{where}[{i}]: expected a row of one text, got {_describe(row)}")
            texts.append(row[0])
        return _texts(texts, where, field_size, max_rows, DF_SPLIT, suffix="[0]")
    if columns is not None and len(columns) != field_size:
        raise RequestError(f"{DF_SPLIT}.columns: {len(columns)} columns, but the model's signature takes {field_size} "
                           f"numbers per row (or one column \"{TEXT_COLUMN}\")")
    return Batch(_numbers(data, where, field_size, exact), "vectors", DF_SPLIT)


def _dataframe_records(value: Any, field_size: int, max_rows: int) -> Batch:
    """Records through MLflow's own DataFrame parser (columns in the order pandas gives them)."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.proto_json_utils import dataframe_from_parsed_json

    if not isinstance(value, list):
        raise RequestError(f"{DF_RECORDS}: expected a list of records, got {_describe(value)}")
    _check_rows(len(value), DF_RECORDS, max_rows)
    for i, record in enumerate(value):
        if not isinstance(record, dict):
            raise RequestError(f"{DF_RECORDS}[{i}]: expected a record (an object), got {_describe(record)}")
    try:
        frame = dataframe_from_parsed_json(value, pandas_orient="records")
    except (MlflowException, ValueError, TypeError) as exc:
        raise RequestError(f"{DF_RECORDS}: {' '.join(str(exc).split())[:200]}") from None
    columns = [str(c) for c in frame.columns]
    # Missing keys become NaN in the frame: take each record's own values to name them.
    rows = [[record.get(c, _MISSING) for c in frame.columns] for record in value]
    return _frame(columns, rows, DF_RECORDS, field_size, max_rows, record_names=True)


class _Missing:
    def __repr__(self) -> str:
        return "missing"


_MISSING = _Missing()


def _frame(columns: list[str], rows: list[list[Any]], source: str, field_size: int, max_rows: int,
           record_names: bool = False) -> Batch:
    _check_rows(len(rows), source, max_rows)
    if columns == [TEXT_COLUMN]:
        return _texts([row[0] for row in rows], source, field_size, max_rows, source,
                      suffix=f".{TEXT_COLUMN}" if record_names else "")
    if len(columns) != field_size:
        raise RequestError(f"{source}: {len(columns)} columns, but the model's signature takes {field_size} numbers "
                           f"per row (or one column \"{TEXT_COLUMN}\")")
    for i, row in enumerate(rows):
        for j, item in enumerate(row):
            if item is _MISSING:
                raise RequestError(f"{source}[{i}].{columns[j]}: missing (every record needs the same {field_size} fields)")
            if isinstance(item, float) and math.isnan(item) and not record_names:
                raise RequestError(f"{source}[{i}][{j}]: empty (expected a number)")
    named = (lambda i, j: f"{source}[{i}].{columns[j]}") if record_names else None
    return Batch(_numbers(rows, source, field_size, True, name=named), "vectors", source)


def _numbers(rows: Sequence[Any], field: str, field_size: int, exact: bool, name=None) -> np.ndarray:
    """Rows of `field_size` JSON numbers as a (B, N) float32 array.

    The fast path is one conversion without a dtype: JSON numbers give an integer or float
    array, while a string anywhere gives a string array, a null an object array and ragged rows
    an error, so only a numeric (B, N) array of finite float32 values is taken from it."""
    if not exact:
        try:
            array = np.array(rows)
        except (ValueError, TypeError, OverflowError):
            array = None
        if array is not None and array.dtype.kind in "fiu" and array.ndim == 2 and array.shape[1] == field_size:
            with np.errstate(over="ignore"):
                out = array.astype(np.float32)
            if np.isfinite(out).all():
                return out
    return _numbers_exactly(rows, field, field_size, name)


def _numbers_exactly(rows: Sequence[Any], field: str, field_size: int, name=None) -> np.ndarray:
    """The walk that names the first bad value (and takes what the fast path could not prove)."""
    out = np.empty((len(rows), field_size), dtype=np.float32)
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            raise RequestError(f"{field}[{i}]: expected a row of {field_size} numbers, got {_describe(row)}")
        nested = next((j for j, value in enumerate(row) if isinstance(value, (list, dict))), None)
        if nested is not None:
            raise RequestError(f"{field}[{i}][{nested}]: expected a number, got {_describe(row[nested])} (the model "
                               f"takes rows of {field_size} numbers: a float32 tensor of shape (-1, {field_size}))")
        if len(row) != field_size:
            raise RequestError(f"{field}[{i}]: {len(row)} number{'s' if len(row) != 1 else ''}, but the model's signature "
                               f"takes {field_size} (a float32 tensor of shape (-1, {field_size}))")
        for j, value in enumerate(row):
            where = name(i, j) if name else f"{field}[{i}][{j}]"
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise RequestError(f"{where}: expected a number, got {_describe(value)}")
            if isinstance(value, int) and abs(value) > FLOAT32_MAX:
                digits = str(value)
                raise RequestError(f"{where}: {digits[:12]}... ({len(digits)} digits) is outside float32's range "
                                   "(the model's signature)")
            if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
                raise RequestError(f"{where}: {value!r} is not a finite number in float32's range (the model's signature)")
            out[i, j] = value
    return out


def _texts(texts: Any, field: str, field_size: int, max_rows: int, source: str, suffix: str = "") -> Batch:
    import torch

    from quadra_pipeline.model.features import text_features

    if not isinstance(texts, list):
        raise RequestError(f"{field}: expected a list of texts, got {_describe(texts)}")
    _check_rows(len(texts), field, max_rows)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise RequestError(f"{field}[{i}]{suffix}: expected a text, got {_describe(text)}")
    vectors = torch.stack([text_features(text, field_size) for text in texts]).numpy().astype(np.float32, copy=False)
    return Batch(vectors, "texts", source)


def content_kind(content_type: str | None) -> str:
    """"json" or "csv" for a Content-Type header (missing: JSON, as MLflow's clients send);
    `RequestError` 415 for anything else, or a charset other than UTF-8."""
    if not content_type:
        return "json"
    parts = [p.strip() for p in content_type.split(";")]
    mime = parts[0].lower()
    parameters = {}
    for part in parts[1:]:
        key, _, value = part.partition("=")
        parameters[key.strip().lower()] = value.strip().strip('"').lower()
    charset = parameters.pop("charset", "utf-8")
    if charset not in ("utf-8", "utf8"):
        raise RequestError(f"charset {charset!r}: the service reads UTF-8 only", status=415, code="UNSUPPORTED_MEDIA_TYPE")
    if parameters:
        raise RequestError(f"unknown content type parameters: {', '.join(sorted(parameters))}", status=415,
                           code="UNSUPPORTED_MEDIA_TYPE")
    if mime == CONTENT_TYPE_JSON:
        return "json"
    if mime == CONTENT_TYPE_CSV:
        return "csv"
    raise RequestError(f"content type {mime!r}: send {CONTENT_TYPE_JSON} (or {CONTENT_TYPE_CSV})", status=415,
                       code="UNSUPPORTED_MEDIA_TYPE")


__all__ = ["Batch", "RequestError", "SUPPORTED_FORMATS", "content_kind", "decode_json", "parse_csv_request",
           "parse_json_request"]
