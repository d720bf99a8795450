"""The database a ``tune`` study lives in: SQLite on one machine, PostgreSQL (or MySQL) shared by several.

:func:`shared_storage` opens Optuna's RDB storage with a heartbeat: a worker that is killed (SIGKILL, a
lost machine) stops beating, and after ``grace_period`` seconds the next worker to look marks its running
trial FAIL and queues a copy of it (Optuna's heartbeat-stale retry callback), so its point is tried again
by another worker. On PostgreSQL the workers' first steps (creating the schema and the study, checking the
study's settings, queueing the first points) run under a session-level advisory lock, so workers that
start at the same moment on several machines do not race; elsewhere a loser of the schema race retries.

Errors a user can hit are torchslim errors naming the database without its password: a URL that cannot
be parsed or whose driver is missing (:class:`~torchslim.errors.ConfigError`, exit 3), a server that
cannot be reached or refuses the login (:class:`~torchslim.errors.OutputExistsError`, the I/O error,
exit 7).

Example:
    >>> display_url("postgresql://ana:secret@db.example:5432/studies")
    'postgresql://ana:***@db.example:5432/studies'
    >>> is_postgres("postgresql+psycopg2://db/x"), is_postgres("sqlite:///x.db")
    (True, False)
"""

from __future__ import annotations

import inspect
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torchslim.errors import ConfigError, OutputExistsError

__all__ = ["KILLED_TRIAL_RETRIES", "display_url", "is_postgres", "open_storage", "shared_storage", "with_driver"]

# How often a killed worker's trial is queued again. A point that kills every worker it runs on (its
# process runs out of memory) is given up after this many tries instead of taking the workers down in turn.
KILLED_TRIAL_RETRIES = 2
# Seconds to wait for a database server to answer before the worker gives up with an error.
CONNECT_TIMEOUT_S = 10
# The advisory-lock key of the workers' start-up section (any 64-bit number; the same for every worker).
_LOCK_KEY = 0x7475_6E65  # "tune"
# Python modules of the database drivers SQLAlchemy loads for a storage URL.
_DRIVERS = frozenset({"psycopg2", "psycopg", "pg8000", "asyncpg", "pymysql", "MySQLdb", "mysql", "oracledb"})


def display_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and logs)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<unparsable storage URL>"


def is_postgres(url: str) -> bool:
    """Whether ``url`` names a PostgreSQL database (any driver)."""
    return url.split(":", 1)[0].split("+", 1)[0] in ("postgresql", "postgres")


def with_driver(url: str) -> str:
    """``url`` with a PostgreSQL driver that is installed: a bare ``postgresql://`` (or ``postgres://``) URL
    gets ``+psycopg`` (psycopg 3, a ``torchslim[tune]`` dependency) or else ``+psycopg2``; SQLAlchemy's own
    default differs between its versions. Other URLs are returned as they are.

    Example:
        >>> with_driver("sqlite:///x.db")
        'sqlite:///x.db'
    """
    import importlib.util

    scheme, sep, rest = url.partition("://")
    if scheme not in ("postgresql", "postgres") or not sep:
        return url
    for driver in ("psycopg", "psycopg2"):
        if importlib.util.find_spec(driver) is not None:
            return f"postgresql+{driver}://{rest}"
    return f"postgresql://{rest}"  # SQLAlchemy then names the missing driver


def _engine_kwargs(url: str) -> dict[str, Any] | None:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 120}}  # seconds a writer waits for the file lock
    if is_postgres(url):
        # pool_pre_ping: a connection the server or a firewall dropped between trials is replaced, not used.
        return {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}, "pool_pre_ping": True}
    return None


def _one_line(error: BaseException, url: str) -> str:
    """The driver's message on one line, the password masked should a driver ever echo it."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    text = " ".join(str(getattr(error, "orig", None) or error).split())
    try:
        password = make_url(url).password
    except (ArgumentError, ValueError):  # an unparsable URL: no password to mask
        password = None
    return text.replace(str(password), "***") if password else text


@contextmanager
def _storage_errors(url: str) -> Iterator[None]:
    """Turn the database errors a user can cause (bad URL, missing driver, unreachable server) into torchslim errors."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

    shown = display_url(url)
    try:
        make_url(url)
    except (ArgumentError, ValueError) as e:  # ValueError: a port that is not a number
        raise ConfigError(f"--storage: cannot parse the storage URL {shown}: {_one_line(e, url)}") from None
    try:
        yield
    except NoSuchModuleError:
        raise ConfigError(f"--storage {shown}: SQLAlchemy has no driver for this database kind") from None
    except ArgumentError as e:
        raise ConfigError(f"--storage: cannot parse the storage URL {shown}: {_one_line(e, url)}") from None
    except ModuleNotFoundError as e:
        if e.name not in _DRIVERS:
            raise
        hint = " (pip install 'torchslim[tune]' installs psycopg)" if is_postgres(url) else ""
        raise ConfigError(f"--storage {shown}: the database driver {e.name} is not installed{hint}") from None
    except OperationalError as e:
        raise OutputExistsError(f"cannot open the study storage {shown}: {_one_line(e, url)}") from None


@contextmanager
def _startup_lock(url: str) -> Iterator[None]:
    """Hold a PostgreSQL advisory lock for the block (no-op for other databases).

    The lock belongs to a connection of its own, so the server releases it if the worker dies inside.
    """
    if not is_postgres(url):
        yield
        return
    import sqlalchemy

    url = with_driver(url)
    engine = sqlalchemy.create_engine(url, **(_engine_kwargs(url) or {}))
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": _LOCK_KEY})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": _LOCK_KEY})
    finally:
        engine.dispose()


def _retry_callback() -> dict[str, Any]:
    """The keyword and callback that retry a heartbeat-stale trial (Optuna 4.9 renamed both)."""
    import optuna

    retry = (
        getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
    )
    params = inspect.signature(optuna.storages.RDBStorage.__init__).parameters
    key = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in params else "failed_trial_callback"
    return {key: retry(max_retry=KILLED_TRIAL_RETRIES)}


def open_storage(url: str, heartbeat_interval: int, grace_period: int) -> Any:
    """Optuna's RDB storage at ``url`` with a heartbeat and the retry of killed workers' trials.

    Without :func:`shared_storage`'s lock, workers that create a new database's schema at the same moment
    race; the loser retries and finds the tables made.
    """
    import optuna
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError, SQLAlchemyError

    from torchslim.tuning.study_check import check_sqlite_file

    check_sqlite_file(url)  # a damaged file: exit 4 at once, not a DatabaseError after the retries
    url = with_driver(url)
    attempts = 1 if is_postgres(url) else 10  # PostgreSQL: serialised by the lock, nothing to retry
    with _storage_errors(url), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # the heartbeat and its retry
        kwargs = {"heartbeat_interval": heartbeat_interval, "grace_period": grace_period, **_retry_callback()}
        for attempt in range(attempts):
            try:
                return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url), **kwargs)
            except (ArgumentError, NoSuchModuleError):
                raise
            except SQLAlchemyError as e:
                last_try = attempt == attempts - 1
                if last_try or (isinstance(e, OperationalError) and not url.startswith("sqlite")):
                    raise  # an unreachable server does not come back in a second
                time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


@contextmanager
def shared_storage(url: str, heartbeat_interval: int, grace_period: int) -> Iterator[Any]:
    """The storage (:func:`open_storage`), with the workers' start-up lock held until the block ends.

    Create or load the study, check its settings and queue its first points inside the block: on
    PostgreSQL no two workers do those at once. Database errors inside the block become torchslim errors.
    """
    with _storage_errors(url), _startup_lock(url):
        yield open_storage(url, heartbeat_interval, grace_period)
