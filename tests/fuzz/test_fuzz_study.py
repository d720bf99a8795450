"""Fuzz what ``torchslim tune`` reads back when it resumes a study: the SQLite ``study.db`` and the attributes
torchslim stored on the study and its trials (settings, confirmations, sizes, latencies, points).

The reader under test does what a resumed ``tune`` does before it searches or writes its report: open the
storage, load the study, check its settings, then build the trial rows, sort the feasible ones by the
objective and take their Pareto front. Inputs: byte mutations of a valid ``study.db`` (a valid page
layout is kept or not, as the mutation falls), and SQL-level lies (one stored attribute's JSON replaced
by generated JSON or by bytes that are not JSON; a trial's state or number replaced).
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import warnings
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

optuna = pytest.importorskip("optuna")

from torchslim.errors import ConfigError, UnsafeInputError  # noqa: E402
from torchslim.tuning.report import objective_key, pareto_front, trial_rows  # noqa: E402
from torchslim.tuning.study import (  # noqa: E402
    check_settings,
    completed_trials,
    default_storage,
    load_study,
    open_storage,
)
from torchslim.tuning.tune import STUDY_NAME  # noqa: E402

pytestmark = pytest.mark.fuzz
_BASE = settings.get_profile("torchslim-fuzz")
# Opening an Optuna storage costs tens of milliseconds: the CI default is a third of the profile's inputs.
FUZZ = settings(_BASE, max_examples=_BASE.max_examples if "TORCHSLIM_FUZZ_EXAMPLES" in os.environ else 20)
SETTINGS = {"workload": "digits", "metric": "accuracy", "max_drop": 0.01, "objective": "both", "seed": 0}
BASELINE = {"size_bytes": 1000, "latency_ms": 1.0}
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _trial_attrs(i: int) -> dict:
    return {
        "origin": "anchor", "description": f"point {i}", "point": {"sparsity": 0.1 * i, "bits": 8},
        "size_bytes": 900 - 100 * i, "latency_ms": 0.5 + 0.1 * i, "quality": 0.9, "drop": 0.001 * i,
        "drop_se": 0.001, "drop_bound": 0.002 * i, "feasible": i < 3, "constraint": [0.002 * i - 0.01],
        "seconds": 1.5,
    }  # fmt: skip


@pytest.fixture(scope="module")
def study_db() -> bytes:
    """A study as ``tune`` leaves it: settings, confirmations, four complete trials and a pruned one."""
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = optuna.create_study(
            storage=open_storage(default_storage(d), 60, 120), study_name=STUDY_NAME, directions=["minimize"] * 2
        )
        study.set_user_attr("settings", SETTINGS)
        study.set_user_attr(
            "confirmations", {"2": {"confirmed": True, "how": "rebuilt with seed 7", "mean_drop": 0.003}}
        )
        dist = {"sparsity": optuna.distributions.FloatDistribution(0.0, 0.9)}
        for i in range(4):
            a = _trial_attrs(i)
            study.add_trial(optuna.trial.create_trial(params={"sparsity": a["point"]["sparsity"]}, distributions=dist,
                                                      values=[a["size_bytes"], a["latency_ms"]], user_attrs=a))  # fmt: skip
        study.add_trial(
            optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, user_attrs={"prune_reason": "cannot beat"})
        )
        return (Path(d) / "study.db").read_bytes()


def _resume(db: bytes):
    """What a resumed ``tune`` reads from ``db`` before searching, and the report's ordering of its trials."""
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (Path(d) / "study.db").write_bytes(db)
        study = load_study(open_storage(default_storage(d), 60, 120), STUDY_NAME, ["minimize"] * 2)
        check_settings(study, SETTINGS)
        rows = trial_rows(study)
        feasible = [r for r in rows if r["state"] == "COMPLETE" and r.get("feasible")]
        sorted(feasible, key=objective_key("both", BASELINE))
        pareto_front(feasible)
        return completed_trials(study.get_trials(deepcopy=False)), rows


def _sql(db: bytes, statement: str, *args) -> bytes:
    """``db`` after one SQL statement (run on a copy with Python's sqlite3); the input is thrown away when
    the schema itself refuses the change (a NOT NULL column)."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.db"
        path.write_bytes(db)
        con = sqlite3.connect(path)
        try:
            con.execute(statement, args)
            con.commit()
        except sqlite3.IntegrityError:
            assume(False)
        finally:
            con.close()
        return path.read_bytes()


@FUZZ
@given(data=st.data())
def test_resume_mutated_db(data, study_db, mutate, refused_or_ok):
    refused_or_ok(_resume, mutate(data, study_db))


TRIAL_KEYS = sorted(_trial_attrs(0)) + ["duplicate_of", "cut_short", "surplus", "prune_reason"]


@FUZZ
@given(
    table=st.sampled_from(["trial_user_attributes", "study_user_attributes"]),
    key=st.sampled_from(TRIAL_KEYS + ["settings", "confirmations"]),
    value=JSON.map(json.dumps) | st.text(max_size=20) | st.binary(max_size=20),
)
def test_resume_attribute_lies(table, key, value, study_db, refused_or_ok):
    """One stored attribute (or all of that name) replaced: generated JSON, or text and bytes that are not JSON."""
    if key in ("settings", "confirmations"):
        table = "study_user_attributes"
    db = _sql(study_db, f"UPDATE {table} SET value_json = ? WHERE key = ?", value, key)
    if table == "trial_user_attributes":  # a key no trial holds yet: add it to the first trial
        db = _sql(db, "INSERT INTO trial_user_attributes (trial_id, key, value_json) SELECT 1, ?, ? "
                      "WHERE NOT EXISTS (SELECT 1 FROM trial_user_attributes WHERE key = ?)", key, value, key)  # fmt: skip
    refused_or_ok(_resume, db)


@FUZZ
@given(
    column=st.sampled_from(["state", "number", "datetime_start", "study_id"]),
    value=st.integers(-(2**63), 2**63 - 1) | st.text(max_size=12) | st.none() | st.floats(),
)
def test_resume_trial_row_lies(column, value, study_db, refused_or_ok):
    refused_or_ok(_resume, _sql(study_db, f"UPDATE trials SET {column} = ? WHERE trial_id = 2", value))


# -- regression tests: fixed inputs ---------------------------------------------------------------------


def test_valid_study_resumes(study_db):
    done, rows = _resume(study_db)
    assert done == 5 and rows[2]["confirmed"] is True


def test_damaged_db_is_refused_at_once(study_db):
    # Was: SQLAlchemy's DatabaseError after ten retries (about 9 s of sleeping).
    with pytest.raises(UnsafeInputError, match="not a valid SQLite study database"):
        _resume(b"SQLite format 3\x00" + bytes(100) + study_db[116:])


def test_size_stored_as_text_is_refused(study_db):
    # Was: TypeError (str / int) when the report sorted the feasible trials.
    db = _sql(study_db, "UPDATE trial_user_attributes SET value_json = ? WHERE key = 'size_bytes'", '"900"')
    with pytest.raises(UnsafeInputError, match="size_bytes is '900', not a number"):
        _resume(db)


def test_settings_that_are_not_an_object_are_refused(study_db):
    # Was: AttributeError ('list' object has no attribute 'get') in check_settings.
    db = _sql(study_db, "UPDATE study_user_attributes SET value_json = '[1]' WHERE key = 'settings'")
    with pytest.raises(UnsafeInputError, match="settings are not an object"):
        _resume(db)


def test_attribute_that_is_not_json_is_refused(study_db):
    # Was: json.JSONDecodeError from Optuna reading the attribute.
    db = _sql(study_db, "UPDATE trial_user_attributes SET value_json = '{' WHERE key = 'point'")
    with pytest.raises(UnsafeInputError, match="cannot be read back"):
        _resume(db)


def test_other_settings_are_still_a_config_error(study_db):
    db = _sql(study_db, "UPDATE study_user_attributes SET value_json = ? WHERE key = 'settings'",
              json.dumps({**SETTINGS, "seed": 1}))  # fmt: skip
    with pytest.raises(ConfigError, match="other settings"):
        _resume(db)


# -- tune --peers: a benchmark JSON whose peer rows are drawn on the Pareto chart ------------------------

PEERS = {"rows": [{"variant": "peer-torchao", "size_mb": 1.5, "latency_ms": 2.0, "quality": {"accuracy": 0.9}},
                  {"variant": "ours", "size_mb": 1.0, "latency_ms": 1.0, "quality": {"accuracy": 0.9}}]}  # fmt: skip


def _peers(text: bytes):
    from torchslim.tuning.report import _peers as read_peers

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "bench.json"
        path.write_bytes(text)
        return read_peers(path, "accuracy")


@FUZZ
@given(data=st.data(), mutated=st.booleans())
def test_peers_json_lies(data, mutated, mutate, refused_or_ok):
    valid = json.dumps(PEERS).encode()
    if mutated:
        text = mutate(data, valid)
    else:
        rows = [dict(r) for r in PEERS["rows"]]
        rows[0][data.draw(st.sampled_from(["variant", "size_mb", "latency_ms", "quality"]))] = data.draw(JSON)
        text = json.dumps(data.draw(st.sampled_from([{"rows": rows}, {"rows": rows[0]}, rows]))).encode()
    refused_or_ok(_peers, text)


def test_peers_valid_and_deeply_nested():
    assert [p["name"] for p in _peers(json.dumps(PEERS).encode())] == ["peer-torchao"]
    # Was: RecursionError from json.loads.
    with pytest.raises(UnsafeInputError, match="--peers"):
        _peers(b"[" * 100_000 + b"]" * 100_000)


@pytest.mark.parametrize("row", [[1, 2], {"variant": 5}])
def test_peer_row_of_another_type_is_refused(row):
    # Was: AttributeError ('list' object has no attribute 'get' / 'int' object has no attribute 'startswith').
    with pytest.raises(UnsafeInputError, match="--peers"):
        _peers(json.dumps({"rows": [row]}).encode())


@pytest.mark.parametrize("size", ["1e400", "NaN", "Infinity", str(10**400)])
def test_peer_size_beyond_float_range_is_refused(size):
    text = json.dumps(PEERS).replace("1.5", size).encode()
    with pytest.raises(UnsafeInputError, match="not a finite number"):
        _peers(text)


@pytest.mark.parametrize("occurrence", [0, 1])
def test_db_text_that_is_not_utf8_is_refused(study_db, occurrence):
    # Found by the long run: one byte 0x80 over the "I" of "INTEGER" in the schema text passed quick_check,
    # then raised UnicodeDecodeError in SQLAlchemy, or an OperationalError reported as an I/O error (exit 7).
    db, at = bytearray(study_db), -1
    for _ in range(occurrence + 1):
        at = study_db.index(b"INTEGER", at + 1)
    db[at] = 0x80
    with pytest.raises(UnsafeInputError, match="study database"):
        _resume(bytes(db))


def test_quick_check_report_that_is_not_utf8_is_refused(study_db, refused_or_ok):
    """Long-run finding: one byte 0x80 written near the end of the file (the study's last page) made
    ``PRAGMA quick_check`` quote text that is not UTF-8; the check raised UnicodeDecodeError, not exit 4."""
    db = bytearray(study_db)
    db[96764] = 0x80
    refused_or_ok(_resume, bytes(db))


@pytest.mark.parametrize("offset", [8174, 8177])
def test_study_row_its_index_contradicts_is_refused(study_db, offset):
    """Full-length run finding: one bit flipped in the stored study name (the unique index still finds the
    old name, the table no longer holds it) made Optuna's create_study raise KeyError('Record does not exist.')."""
    db = bytearray(study_db)
    db[offset] ^= 1
    with pytest.raises(UnsafeInputError, match="study database is damaged: KeyError"):
        _resume(bytes(db))
