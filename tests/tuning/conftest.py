"""A real PostgreSQL server for the tuning tests, started once per test session and stopped at its end.

The server binaries come from the ``pgserver`` wheel (a dev dependency, so ``make setup`` installs them),
else from ``initdb`` on ``PATH`` or Debian's ``/usr/lib/postgresql/*/bin``; the tests that need a server
are skipped, saying why, only when none of these is there. The cluster lives in a temporary folder and
listens on 127.0.0.1 at a free port with ``trust`` authentication (any password is accepted, so the tests
can check that a password never reaches a message). PostgreSQL refuses to run as root: under root the
server runs as the unprivileged ``nobody`` user. (pgserver's own start-up, under root, would add a system
user and widen the permissions of every folder above its data folder; only its binaries are used here.)
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

PASSWORD = "pg-test-secret"


def _bin_dirs() -> list[Path]:
    """Folders that may hold initdb/pg_ctl/postgres, the pgserver wheel's first."""
    dirs = []
    spec = importlib.util.find_spec("pgserver")  # located, not imported: its import sets up runtime folders
    if spec is not None and spec.submodule_search_locations:
        dirs.append(Path(spec.submodule_search_locations[0]) / "pginstall" / "bin")
    initdb = shutil.which("initdb")
    if initdb:
        dirs.append(Path(initdb).resolve().parent)
    dirs += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    return [d for d in dirs if (d / "initdb").is_file() and (d / "pg_ctl").is_file()]


def _run_as() -> dict[str, Any]:
    """``subprocess`` keywords that run a command as a user PostgreSQL accepts."""
    if os.geteuid() != 0:
        return {}
    import pwd

    entry = pwd.getpwnam("nobody")
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _usable(bin_dir: Path, as_user: dict[str, Any]) -> bool:
    try:
        run = subprocess.run([str(bin_dir / "initdb"), "--version"], capture_output=True, timeout=30, **as_user)
    except (OSError, subprocess.SubprocessError):
        return False
    return run.returncode == 0


class PostgresServer:
    """A throwaway cluster: ``url(db)`` gives a SQLAlchemy URL, ``new_database()`` a fresh database's URL."""

    def __init__(self, bin_dir: Path, as_user: dict[str, Any]) -> None:
        self.bin_dir, self.as_user = bin_dir, as_user
        self.data = Path(tempfile.mkdtemp(prefix="torchslim-pg-"))
        if as_user:
            os.chown(self.data, as_user["user"], as_user["group"])
        self.port = _free_port()

    def _pg(self, *args: str, timeout: float = 60) -> None:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.data, **self.as_user)
        if run.returncode != 0:
            log = self.data / "server.log"
            tail = log.read_text()[-2000:] if log.is_file() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed ({run.returncode}): {run.stderr.strip()}\n{tail}")

    def start(self) -> None:
        pgdata = str(self.data / "cluster")
        self._pg("initdb", "-D", pgdata, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-h 127.0.0.1 -p {self.port} -k {self.data} -c fsync=off -c shared_buffers=16MB"
        self._pg("pg_ctl", "-D", pgdata, "-l", str(self.data / "server.log"), "-o", options, "-w", "-t", "60", "start")

    def stop(self) -> None:
        try:
            self._pg("pg_ctl", "-D", str(self.data / "cluster"), "-m", "immediate", "-w", "stop")
        except (RuntimeError, subprocess.SubprocessError):
            pass  # never started, or already gone
        finally:
            shutil.rmtree(self.data, ignore_errors=True)

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres:{PASSWORD}@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        import sqlalchemy

        from torchslim.tuning.storage import with_driver

        name = f"t_{uuid.uuid4().hex[:12]}"
        engine = sqlalchemy.create_engine(with_driver(self.url()), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
        finally:
            engine.dispose()
        return self.url(name)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A running PostgreSQL server (session-wide); skips when no server binaries or driver are installed."""
    if not any(importlib.util.find_spec(d) for d in ("psycopg", "psycopg2")):
        pytest.skip("no PostgreSQL driver: pip install 'torchslim[tune]' (psycopg)")
    as_user = _run_as()
    dirs = [d for d in _bin_dirs() if _usable(d, as_user)]
    if not dirs:
        pytest.skip(
            "no PostgreSQL server binaries: install the pgserver wheel (pip install pgserver, in torchslim[dev]) "
            "or Debian's postgresql package"
        )
    server = PostgresServer(dirs[0], as_user)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a new, empty database on the session's server (password included)."""
    return postgres_server.new_database()
