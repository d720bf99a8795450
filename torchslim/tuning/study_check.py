"""Check a tune study read back from its storage before torchslim uses it.

``torchslim tune --out OUT`` resumes the study in ``OUT/study.db`` (or ``--storage``), a file that may
come from elsewhere (copied, damaged, edited). Before any of it is used:

- :func:`check_sqlite_file`: an existing SQLite file must pass SQLite's own ``PRAGMA quick_check``
  (read-only) and every row of every table must decode (text is UTF-8), so a damaged file is refused at
  once instead of failing deep inside Optuna or SQLAlchemy;
- :func:`check_study`: the study and every trial in it are read once, and the attributes
  torchslim wrote itself (:data:`TRIAL_ATTRS`, :data:`CONFIRMATION_ATTRS`, ``settings``) must have the
  types it wrote, so later code (sorting by size, formatting the report) meets no string where it
  expects a number.

Both raise :class:`~torchslim.errors.UnsafeInputError` (exit 4) naming the storage and the problem.

Example:
    >>> check_attrs({"size_bytes": 10, "feasible": True}, TRIAL_ATTRS, "trial 0")
    >>> check_attrs({"size_bytes": "10"}, TRIAL_ATTRS, "trial 0")
    Traceback (most recent call last):
    ...
    torchslim.errors.UnsafeInputError: trial 0: size_bytes is '10', not a number
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torchslim.errors import UnsafeInputError

__all__ = ["CONFIRMATION_ATTRS", "FEASIBLE_NEEDS", "TRIAL_ATTRS", "check_attrs", "check_sqlite_file", "check_study"]


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _number_or_none(v: Any) -> bool:  # a standard error: None where the workload has no per-example scores
    return v is None or _number(v)


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _flag(v: Any) -> bool:
    return isinstance(v, bool)


def _text(v: Any) -> bool:
    return isinstance(v, str)


def _point(v: Any) -> bool:  # a search-space point: parameter name -> a JSON scalar
    return isinstance(v, dict) and all(
        isinstance(k, str) and (x is None or isinstance(x, (str, int, float, bool))) for k, x in v.items()
    )


def _numbers(v: Any) -> bool:
    return isinstance(v, list) and all(_number(x) for x in v)


_KINDS: dict[Callable[[Any], bool], str] = {
    _number: "a number",
    _number_or_none: "a number or null",
    _integer: "an integer",
    _flag: "true or false",
    _text: "a string",
    _point: "an object of parameter values",
    _numbers: "a list of numbers",
}

# The user attributes ``tune`` writes on a trial, and their types.
TRIAL_ATTRS: dict[str, Callable[[Any], bool]] = {
    **dict.fromkeys(("size_bytes", "latency_ms", "quality", "quick_quality", "drop", "drop_bound", "seconds"), _number),
    "drop_se": _number_or_none,
    **dict.fromkeys(("feasible", "cut_short", "surplus"), _flag),
    **dict.fromkeys(("duplicate_of", "yielded_to"), _integer),
    **dict.fromkeys(("description", "origin", "prune_reason", "error", "worker"), _text),
    "point": _point,
    "constraint": _numbers,
}
# What the report and the confirmation read from a feasible trial.
FEASIBLE_NEEDS = ("size_bytes", "latency_ms", "drop")
# The fields of one entry of the study's ``confirmations`` attribute.
CONFIRMATION_ATTRS: dict[str, Callable[[Any], bool]] = {
    "confirmed": _flag,
    "how": _text,
    "confirm_seed": _integer,
    **dict.fromkeys(("confirm_quality", "confirm_drop", "mean_drop", "mean_bound"), _number),
    "confirm_drop_se": _number_or_none,
}


def check_attrs(attrs: Mapping[str, Any], schema: Mapping[str, Callable[[Any], bool]], where: str) -> None:
    """Refuse a known attribute of the wrong type; unknown attributes are kept as they are."""
    for key, ok in schema.items():
        if key in attrs and not ok(attrs[key]):
            raise UnsafeInputError(f"{where}: {key} is {str(attrs[key])[:80]!r}, not {_KINDS[ok]}")


def _check_study_attrs(attrs: Mapping[str, Any], where: str) -> None:
    settings = attrs.get("settings")
    if settings is not None and not isinstance(settings, dict):
        raise UnsafeInputError(f"{where}: the stored settings are not an object")
    confirmations = attrs.get("confirmations", {})
    if not isinstance(confirmations, dict):
        raise UnsafeInputError(f"{where}: the stored confirmations are not an object")
    for number, entry in confirmations.items():
        if not isinstance(entry, dict):
            raise UnsafeInputError(f"{where}: the confirmation of trial {number[:40]!r} is not an object")
        check_attrs(entry, CONFIRMATION_ATTRS, f"{where}: confirmation of trial {number[:40]!r}")


def check_sqlite_file(url: str) -> None:
    """Refuse an existing, non-empty SQLite file behind ``url`` that ``quick_check`` finds damaged or whose
    schema or rows hold text that does not decode."""
    if not url.startswith("sqlite:///"):
        return
    path = Path(url[len("sqlite:///") :])
    if not path.is_file() or path.stat().st_size == 0:
        return  # a new study: Optuna creates it
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            con.text_factory = bytes  # quick_check quotes damaged text in its report, which need not decode
            rows = [tuple(v.decode("utf-8", "replace") for v in r) for r in con.execute("PRAGMA quick_check")]
            con.text_factory = str
            if rows == [("ok",)]:  # quick_check reads the pages, not the text in them: decode every row once
                schema = con.execute("SELECT type, name, sql FROM sqlite_master").fetchall()  # the DDL text too
                for kind, name, _ in schema:
                    if kind != "table":
                        continue
                    quoted = '"' + str(name).replace('"', '""') + '"'
                    con.execute(f"SELECT * FROM {quoted}").fetchall()
        finally:
            con.close()
    except sqlite3.OperationalError as e:
        if "locked" in str(e) or "busy" in str(e):
            return  # another worker is writing: Optuna waits for it
        raise UnsafeInputError(f"{path}: not a readable SQLite study database ({e})") from None
    except sqlite3.DatabaseError as e:  # "file is not a database", "database disk image is malformed"
        raise UnsafeInputError(f"{path}: not a valid SQLite study database ({e})") from None
    except UnicodeDecodeError as e:  # a row whose text is not UTF-8 (Optuna would fail on it later)
        raise UnsafeInputError(f"{path}: the SQLite study database holds text that is not UTF-8 ({e.reason})") from None
    if rows != [("ok",)]:
        raise UnsafeInputError(f"{path}: the SQLite study database is damaged ({str(rows[0][0])[:200]})")


def check_study(study: Any, where: str | None = None) -> None:
    """Read an Optuna ``study``'s attributes and every trial once, and check what torchslim wrote on them.

    A trial judged feasible must also hold the numbers the report sorts it by (:data:`FEASIBLE_NEEDS`).

    Raises:
        UnsafeInputError: Optuna cannot read the study or a trial back, or an attribute torchslim wrote has
            another type or is missing.
    """
    where = where or f"the stored study {getattr(study, 'study_name', '')!r}"
    try:
        _check_study_attrs(study.user_attrs, where)
        for trial in study.get_trials(deepcopy=False):
            attrs = trial.user_attrs
            check_attrs(attrs, TRIAL_ATTRS, f"{where}: trial {trial.number}")
            missing = [k for k in FEASIBLE_NEEDS if k not in attrs] if attrs.get("feasible") else []
            if missing:
                raise UnsafeInputError(f"{where}: trial {trial.number} is feasible but has no {', '.join(missing)}")
            _ = (trial.params, trial.values, trial.state)
    except UnsafeInputError:
        raise
    except Exception as e:  # noqa: BLE001 - Optuna and SQLAlchemy raise many types on a damaged database
        text = str(e).strip().splitlines()
        raise UnsafeInputError(
            f"{where} cannot be read back ({type(e).__name__}: {text[0][:200] if text else ''})"
        ) from None
