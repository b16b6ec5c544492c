"""Shared test infrastructure: a throwaway PostgreSQL server.

`postgres_url` (session) starts one server for the whole test run and yields a
`postgresql+psycopg://` URL of a test database on it; `fresh_postgres_url` (per test) creates a
new, empty database on that server, so a test that writes studies cannot see another's.
Tests never see a developer's MT_TUNE_* settings (MT_TUNE_STORAGE could name a real database).

With MT_TUNE_TEST_POSTGRES_URL set, that server is used instead of starting one (its user
needs the right to create databases for `fresh_postgres_url`). Without server binaries the
PostgreSQL tests are skipped locally, but fail when CI=true: CI must never pass by skipping.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ENV_URL = "MT_TUNE_TEST_POSTGRES_URL"
TEST_DB = "mt_tune_test"
SERVER_USER = "postgres"  # the superuser initdb creates; also the OS user when run as root


def pytest_configure(config: pytest.Config) -> None:
    """Tests run with mt-tune's defaults: a developer's MT_TUNE_* settings (above all
    MT_TUNE_STORAGE, which may name a real study database) must not reach them. Tests that
    need a setting set it themselves; MT_TUNE_TEST_* configure the tests and are kept."""
    for name in [n for n in os.environ if n.startswith("MT_TUNE_") and not n.startswith("MT_TUNE_TEST_")]:
        del os.environ[name]


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _missing_postgres(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"PostgreSQL is required in CI: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL not available: {reason}")


def _server_bin_dir() -> Path | None:
    """The newest installed PostgreSQL server's bin directory (Debian layout), else PATH."""

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", path))

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _admin_conninfo(url: str) -> str:
    """A libpq URI for the maintenance database `postgres` on the server of a SQLAlchemy URL."""
    from sqlalchemy.engine import make_url

    admin = make_url(url).set(drivername="postgresql", database="postgres")
    return admin.render_as_string(hide_password=False)


def _with_database(url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=name).render_as_string(hide_password=False)


def _create_database(url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(_admin_conninfo(url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')


def _drop_database(url: str, name: str) -> None:
    import psycopg

    # FORCE: storages opened by the tests keep pooled connections to the database.
    with psycopg.connect(_admin_conninfo(url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class _ThrowawayServer:
    """initdb + pg_ctl start in a temporary directory; stop() removes everything."""

    def __init__(self, bin_dir: Path):
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="mt-tune-pg-"))
        self.data_dir = self.root / "data"
        self.log_file = self.root / "server.log"
        self.port = 0
        # initdb refuses to run as root: run the server tools as the postgres OS user, which
        # must own the directory.
        self.run_as = SERVER_USER if os.geteuid() == 0 else None
        if self.run_as:
            try:
                entry = pwd.getpwnam(self.run_as)
            except KeyError:
                shutil.rmtree(self.root, ignore_errors=True)
                raise RuntimeError(f"running as root, but there is no '{self.run_as}' OS user to run initdb")
            os.chown(self.root, entry.pw_uid, entry.pw_gid)

    def _run(self, *args: str) -> None:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        result = subprocess.run(cmd, user=self.run_as, capture_output=True, text=True, timeout=60, cwd=self.root)
        if result.returncode != 0:
            log = self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stderr}{result.stdout}\n{log}")

    def start(self) -> None:
        self._run("initdb", "-D", str(self.data_dir), "-U", SERVER_USER, "-A", "trust", "-E", "UTF8",
                  "--no-locale", "--no-sync")
        # A free port can be taken between probing and binding: try a few.
        for attempt in range(3):
            self.port = _free_port()
            # Durability is worthless for a throwaway server; skipping fsync makes it fast.
            options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=300 "
                       "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
            try:
                self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-o", options,
                          "-w", "-t", "30", "start")
                return
            except RuntimeError:
                if attempt == 2:
                    raise

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{SERVER_USER}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        try:
            if self.port:
                self._run("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a test database on a PostgreSQL server that lives for the whole test run."""
    external = os.environ.get(ENV_URL)
    if external:
        yield external
        return
    bin_dir = _server_bin_dir()
    if bin_dir is None:
        _missing_postgres("no server binaries (initdb) under /usr/lib/postgresql/*/bin or on PATH; "
                          f"install the postgresql package or set {ENV_URL}")
    try:
        server = _ThrowawayServer(bin_dir)
    except RuntimeError as e:
        _missing_postgres(str(e))
    try:
        server.start()
        url = server.url(TEST_DB)
        _create_database(url, TEST_DB)
        yield url
    finally:
        server.stop()


@pytest.fixture
def fresh_postgres_url(postgres_url: str) -> Iterator[str]:
    """URL of a new, empty database on the test server, dropped after the test."""
    name = f"mt_tune_{uuid.uuid4().hex[:12]}"
    _create_database(postgres_url, name)
    try:
        yield _with_database(postgres_url, name)
    finally:
        _drop_database(postgres_url, name)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and do not fight other processes for cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
