"""``torchslim tune --storage postgresql://...`` against a real PostgreSQL server (tests/tuning/conftest.py).

Two worker processes share one study; one is killed (SIGKILL) in the middle of a trial and started again:
the study reaches its count with no point evaluated twice, the killed trial is FAIL and its point is
evaluated by the retry the heartbeat queued.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from torchslim.cli import main
from torchslim.errors import ConfigError, OutputExistsError
from torchslim.tuning.moves import point_key
from torchslim.tuning.storage import display_url, shared_storage, with_driver

HERE = Path(__file__).resolve().parent
WORKLOAD = "postgres_workload:SlowTiny"
STUDY = "torchslim-tune"
TRIALS = 10


def _argv(url: str, out: Path, worker: int, max_drop: str = "0.5") -> list[str]:
    return [
        "tune",
        "--workload",
        WORKLOAD,
        "--max-drop",
        max_drop,
        "--trials",
        str(TRIALS),
        "--out",
        str(out),
        "--storage",
        url,
        "--worker",
        str(worker),
        "--builtins",
        "none",
        "--confirm",
        "0",
        "--latency-runs",
        "2",
        "--heartbeat",
        "1",
        "--grace-period",
        "4",
        "--no-progress",
    ]


def _worker(url: str, out: Path, worker: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])))
    return subprocess.Popen(
        [sys.executable, "-m", "torchslim", *_argv(url, out, worker)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _trials(url: str) -> list[optuna.trial.FrozenTrial]:
    storage = optuna.storages.RDBStorage(with_driver(url))
    try:
        return optuna.load_study(study_name=STUDY, storage=storage).get_trials(deepcopy=False)
    finally:
        storage.remove_session()
        storage.engine.dispose()


def _running_trial_of(url: str, pid: int) -> optuna.trial.FrozenTrial | None:
    """The trial process ``pid`` is evaluating (past the duplicate check), if any."""
    try:
        trials = _trials(url)
    except (KeyError, optuna.exceptions.StorageInternalError, ValueError):
        return None  # the study is not created yet
    mine = [t for t in trials if t.user_attrs.get("worker", "").endswith(f":{pid}")]
    return next((t for t in mine if t.state == TrialState.RUNNING and "point" in t.user_attrs), None)


def _finish(proc: subprocess.Popen, timeout: float) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"worker {proc.pid} did not finish in {timeout:.0f} s:\n{out[-3000:]}")
    assert proc.returncode == 0, out[-3000:]
    return out


@pytest.mark.slow
def test_two_workers_share_a_postgres_study_and_survive_a_killed_one(postgres_url: str, tmp_path: Path) -> None:
    # Worker 0 starts alone and is killed in its first trial (so a loaded machine cannot let worker 1
    # take every point first); then worker 1 and worker 0 restarted share the rest of the study.
    a = _worker(postgres_url, tmp_path / "a", 0)
    procs = [a]
    try:
        deadline, killed = time.monotonic() + 180, None
        while killed is None and time.monotonic() < deadline and a.poll() is None:
            killed = _running_trial_of(postgres_url, a.pid)
            if killed is None:
                time.sleep(0.05)
        if killed is None:
            a.kill()
            pytest.fail(f"worker 0 never ran a trial (exit {a.poll()}):\n{a.communicate()[0][-3000:]}")
        a.kill()  # SIGKILL: no cleanup, its trial stays RUNNING until its heartbeat is stale
        a.wait()
        assert a.returncode == -signal.SIGKILL
        b, restarted = _worker(postgres_url, tmp_path / "b", 1), _worker(postgres_url, tmp_path / "a", 0)
        procs += [b, restarted]
        _finish(b, 180)
        _finish(restarted, 180)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()

    trials = _trials(postgres_url)
    by_number = {t.number: t for t in trials}
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) >= TRIALS >= 8
    points = [point_key(t.params) for t in done]
    assert len(set(points)) == len(points), "a point was evaluated twice"
    assert by_number[killed.number].state == TrialState.FAIL  # failed by the heartbeat check
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert any(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in retries), "the killed point never ran"
    assert all(t.params == killed.params for t in retries)
    pids = {t.user_attrs["worker"].rsplit(":", 1)[1] for t in done}
    assert len(pids) >= 2 and str(a.pid) not in pids  # both live workers completed trials; the killed one none
    assert (tmp_path / "b" / "best.yaml").is_file() and (tmp_path / "a" / "best.yaml").is_file()


def test_other_settings_on_a_postgres_study_are_refused(postgres_url: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(HERE))
    settings = {"workload": "w", "max_drop": 0.5}
    with shared_storage(postgres_url, 1, 4) as storage:
        study = optuna.create_study(storage=storage, study_name=STUDY, load_if_exists=True)
        study.set_user_attr("settings", settings)
    assert main(_argv(postgres_url, tmp_path / "o", 0)) == ConfigError.exit_code


def test_workers_starting_together_create_one_schema_and_study(postgres_url: str) -> None:
    from torchslim.tuning.study import check_settings

    errors: list[BaseException] = []
    settings = {"workload": "w", "max_drop": 0.1}

    def start() -> None:
        try:
            with shared_storage(postgres_url, 1, 4) as storage:
                study = optuna.create_study(storage=storage, study_name=STUDY, load_if_exists=True)
                check_settings(study, settings)
                if not study.trials:
                    study.enqueue_trial({"x": 1.0})
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    storage = optuna.storages.RDBStorage(with_driver(postgres_url))
    summaries = optuna.get_all_study_summaries(storage)
    assert [s.study_name for s in summaries] == [STUDY]
    study = optuna.load_study(study_name=STUDY, storage=storage)
    assert study.user_attrs["settings"] == settings
    assert len(study.trials) == 1  # queued once: the start-up section ran one worker at a time
    storage.engine.dispose()


def test_unreachable_server_is_a_one_line_error_without_the_password(tmp_path: Path, monkeypatch, capsys) -> None:
    pytest.importorskip("psycopg")
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://ana:hunter2-secret@127.0.0.1:{port}/studies"
    with pytest.raises(OutputExistsError) as info:
        with shared_storage(url, 1, 4):
            pass
    assert info.value.exit_code == 7
    message = str(info.value)
    assert "\n" not in message and "hunter2" not in message
    assert "127.0.0.1" in message and display_url(url) in message
    monkeypatch.syspath_prepend(str(HERE))
    assert main(_argv(url, tmp_path / "o", 0)) == 7
    err = capsys.readouterr().err
    assert "127.0.0.1" in err and "hunter2" not in err


def test_bad_storage_urls_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="cannot parse"):
        with shared_storage("postgresql://ana:pw@host:notaport/db", 1, 4):
            pass
    with pytest.raises(ConfigError, match="no driver"):
        with shared_storage("nosuchdb://ana:pw@host/db", 1, 4):
            pass
    assert with_driver("postgres://u@h/db").startswith("postgresql+psycopg")
