"""A real PostgreSQL server for tests: initdb into a temporary directory, postgres on a free loopback port.

`PostgresServer` works anywhere (a benchmark, a shell); `postgres_url` and `postgres_database_url` are the
pytest fixtures over it, registered in tests/conftest.py.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest
from psycopg import sql

from tests.support.ports import free_port

# The server refuses to run as root; under root (CI) it runs as this user, which owns its directory.
UNPRIVILEGED_USER = "nobody"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0

# Settings suited to tests. Durability stays as in production, because tests measure it.
SETTINGS = """\
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{socket_dir}'
fsync = on
synchronous_commit = on
full_page_writes = on
shared_buffers = 32MB
# About a hundred concurrent clients, and room for the fixtures' own connections.
max_connections = 150
"""


def is_running(process: psutil.Process) -> bool:
    """Whether a process still runs; a zombie, which no one may reap, has ended."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class PostgresError(RuntimeError):
    """The server's binaries are missing, or it did not start or stop; the message carries its log."""


def find_bindir() -> Path:
    """The directory of PostgreSQL's server binaries (initdb, postgres, pg_ctl).

    Looks at `pg_config --bindir`, then the newest /usr/lib/postgresql/*/bin (Debian's layout).
    Raises PostgresError when none holds all three.
    """
    candidates = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if found.returncode == 0:
            candidates.append(Path(found.stdout.strip()))
    versions = [path for path in Path("/usr/lib/postgresql").glob("*/bin") if path.parent.name.isdigit()]
    candidates += sorted(versions, key=lambda path: int(path.parent.name), reverse=True)
    for bindir in candidates:
        if all((bindir / name).is_file() for name in ("initdb", "postgres", "pg_ctl")):
            return bindir
    raise PostgresError(
        "PostgreSQL's server binaries (initdb, postgres, pg_ctl) are neither in `pg_config --bindir` nor in "
        "/usr/lib/postgresql/*/bin; `make postgresql` installs Debian's postgresql package"
    )


class PostgresServer:
    """A throwaway PostgreSQL cluster in its own directory, served on 127.0.0.1.

    `start()` runs initdb the first time and starts the server; after `kill()` it starts the same cluster
    again (crash recovery), on the same port. `stop()` shuts it down fast and removes the directory.

    Parameters:
        bindir: the server binaries; found with `find_bindir()` when None.
    """

    def __init__(self, bindir: Path | None = None) -> None:
        self.bindir = bindir or find_bindir()
        self.root = Path(tempfile.mkdtemp(prefix="promobot-pg-"))
        self.data = self.root / "data"
        self.log_path = self.root / "server.log"
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self.owner = pwd.getpwnam(UNPRIVILEGED_USER) if os.geteuid() == 0 else None
        if self.owner:
            os.chown(self.root, self.owner.pw_uid, self.owner.pw_gid)

    def url(self, database: str = "postgres") -> str:
        """The libpq URL of a database on this server (the superuser `postgres`, no password)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def pid(self) -> int:
        """The postmaster's process id."""
        if self.process is None:
            raise PostgresError("the server is not running")
        return self.process.pid

    def start(self) -> PostgresServer:
        """Initialise the cluster if needed, start the server and wait until it accepts connections.

        Raises PostgresError with initdb's or the server's output when either fails.
        """
        if not self.data.exists():
            self._initdb()
        if self.port is None:
            self.port = free_port()
        (self.data / "tests.conf").write_text(
            SETTINGS.format(port=self.port, socket_dir=str(self.root).replace("'", "''"))
        )
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [self.bindir / "postgres", "-D", self.data],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                **self._as_owner(),
            )
        self._wait_until_accepting()
        return self

    def kill(self) -> None:
        """Kill the postmaster and every backend with SIGKILL, as a crash of the machine would."""
        postmaster = psutil.Process(self.pid)
        # Backends lead their own process groups, so each is killed by its id; the postmaster, stopped
        # first, forks no new one meanwhile.
        postmaster.suspend()
        backends = postmaster.children()
        for process in [postmaster, *backends]:
            process.kill()
        self.process.wait(timeout=STOP_TIMEOUT)
        self.process = None
        # A backend holds the cluster's shared memory until it has exited, and the next start needs it free.
        deadline = time.monotonic() + STOP_TIMEOUT
        while any(is_running(backend) for backend in backends):
            if time.monotonic() > deadline:
                raise PostgresError(f"backends outlived SIGKILL: {backends}")
            time.sleep(0.01)

    def pause(self) -> None:
        """Stop the postmaster and every backend (SIGSTOP): the server takes connections into the kernel's
        backlog and answers nothing, as a frozen machine or a network that drops packets would."""
        postmaster = psutil.Process(self.pid)
        postmaster.suspend()  # first: it forks no new backend meanwhile
        for backend in postmaster.children():
            backend.suspend()

    def resume(self) -> None:
        """Let a paused server run again (SIGCONT), its backends first."""
        postmaster = psutil.Process(self.pid)
        for backend in postmaster.children():
            backend.resume()
        postmaster.resume()

    def stop(self) -> None:
        """Shut the server down (`pg_ctl stop -m fast`) if it runs, and remove its directory."""
        try:
            if self.process is not None and self.process.poll() is None:
                stopped = subprocess.run(
                    [self.bindir / "pg_ctl", "stop", "-D", self.data, "-m", "fast", "-w", "-t", "30"],
                    capture_output=True,
                    text=True,
                    check=False,
                    **self._as_owner(),
                )
                try:
                    self.process.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.kill()
                    raise PostgresError(
                        f"pg_ctl stop did not stop the server: {stopped.stdout}{stopped.stderr}"
                    ) from None
            self.process = None
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self, name: str) -> str:
        """Create an empty database and return its URL."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, ending any connection still open to it."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _as_owner(self) -> dict:
        """Subprocess arguments that run a command as the directory's owner, with a clean environment."""
        # PG* variables of the caller's shell (PGDATA, PGPORT, …) must not steer initdb or pg_ctl.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
        arguments = {"cwd": self.root, "env": env}
        if self.owner:
            arguments |= {"user": self.owner.pw_uid, "group": self.owner.pw_gid, "extra_groups": []}
        return arguments

    def _initdb(self) -> None:
        # No locale: a minimal machine may have none but C; UTF8 is what the bot stores.
        initdb = [self.bindir / "initdb", "-D", self.data, "-U", "postgres", "-A", "trust"]
        created = subprocess.run(
            [*initdb, "--no-locale", "-E", "UTF8", "--no-instructions"],
            capture_output=True,
            text=True,
            check=False,
            **self._as_owner(),
        )
        if created.returncode != 0:
            raise PostgresError(f"initdb failed in {self.root}:\n{created.stdout}{created.stderr}")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("include_if_exists = 'tests.conf'\n")

    def _wait_until_accepting(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise PostgresError(f"the server exited with {self.process.returncode}:\n{self.log()}")
            try:
                with psycopg.connect(self.url(), connect_timeout=5):
                    return
            except psycopg.OperationalError as error:
                if time.monotonic() > deadline:
                    raise PostgresError(f"no connection to the server: {error}\n{self.log()}") from None
            time.sleep(0.05)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole session, stopped and removed at its end."""
    server = PostgresServer()
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of the session's database `promobot` on the session's server."""
    return postgres_server.create_database("promobot")


@pytest.fixture
def postgres_database_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a fresh, empty database of this test's own, dropped after it."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    yield postgres_server.create_database(name)
    postgres_server.drop_database(name)
