"""A throwaway PostgreSQL server for the tests: its own cluster in a temporary directory, listening on 127.0.0.1 at a
free port (its socket in that directory too), started on first use and stopped and deleted when the test process
ends. Each caller gets a fresh, empty database on it.

PostgreSQL refuses to run as root, so under root the cluster belongs to the ``postgres`` user and its programs run
as that user (``runuser``). Without PostgreSQL's programs (Debian's ``postgresql`` package), :func:`database_url`
skips the test, saying why.
"""

from __future__ import annotations

import atexit
import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

_server: PostgresServer | None = None
_names = itertools.count()


def binaries() -> Path | None:
    """The newest installed PostgreSQL's bin directory (Debian's layout first, then the PATH)."""
    def version(initdb: str) -> tuple[int, ...]:  # Debian's directories are named 15, 16, or 9.6 of old
        return tuple(int(part) for part in Path(initdb).parent.parent.name.split(".") if part.isdigit())

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresServer:
    def __init__(self, bin_dir: Path):
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="faster-dia-pg-"))
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "postgres"
            shutil.chown(self.root, user=self.user)
        with socket.socket() as probe:  # a free port (the cluster binds it a moment later)
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        data = self.root / "data"
        self._run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        # Durability is not what is tested: no fsync keeps the cluster fast on a busy machine.
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off")
        self._run("pg_ctl", "-D", str(data), "-o", options, "-l", str(self.root / "log"), "-w", "-t", "60", "start")
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}"

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bin_dir / program), *args]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, cwd=self.root)
        if done.returncode != 0:
            log = self.root / "log"
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr.strip()}"
                               + (f"\n{log.read_text()}" if log.exists() else ""))

    def database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = f"test_{os.getpid()}_{next(_names)}"
        with psycopg.connect(f"{self.url}/postgres", autocommit=True) as db:
            db.execute(f"CREATE DATABASE {name}")
        return f"{self.url}/{name}"

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def database_url() -> str:
    """A fresh database on the session's PostgreSQL server (started on first use); skips without PostgreSQL."""
    global _server
    if _server is None:
        bin_dir = binaries()
        if bin_dir is None:
            pytest.skip("PostgreSQL is not installed (no initdb under /usr/lib/postgresql/*/bin or on the PATH)")
        _server = PostgresServer(bin_dir)
        atexit.register(_server.stop)
    return _server.database()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path) -> str:
    """A job store database URL: an SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tasks.sqlite3'}"
    return database_url()
