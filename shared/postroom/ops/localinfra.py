"""Private PostgreSQL and Redis under var/ for `postroom up` when no URLs are configured.

Both run from binaries on PATH (or /usr/lib/postgresql/*/bin), listen on a
free loopback port and are children of this process, stopped by PID. As root,
PostgreSQL is run as an unprivileged user (``postgres`` when it exists, else
``nobody``) through ``setpriv``, which execs rather than forks, so the PID we
hold is the postmaster's; see docs/decisions/0002-private-infrastructure.md.
"""

from __future__ import annotations

import glob
import hashlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from postroom.logs import get_logger

log = get_logger("localinfra")

PG_USER = "postroom"
PG_DATABASE = "postroom"


class InfraError(RuntimeError):
    """A private server could not be started; the message says why in one line."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def find_binary(name: str) -> str:
    """``name`` from PATH, else the newest /usr/lib/postgresql/*/bin (Debian's layout)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if candidates:
        return candidates[-1]
    raise InfraError(f"{name} not found on PATH or in /usr/lib/postgresql/*/bin; install "
                     "PostgreSQL and Redis, or set POSTROOM_DATABASE_URL and POSTROOM_REDIS_URL")


def _wait_port(host: str, port: int, proc: subprocess.Popen[bytes], timeout: float,
               what: str, log_file: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise InfraError(f"{what} exited with code {proc.returncode} at start; "
                             f"see {log_file}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise InfraError(f"{what} did not accept connections within {timeout:.0f}s; see {log_file}")


def _stop_process(proc: subprocess.Popen[bytes] | None, sig: int, timeout: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class PrivatePostgres:
    """A PostgreSQL cluster in ``<var>/pg`` serving one database to user ``postroom``."""

    def __init__(self, var_dir: str | Path, *, host: str = "127.0.0.1", port: int | None = None,
                 durable: bool = True) -> None:
        self.root = Path(var_dir).resolve() / "pg"
        self.data = self.root / "data"
        self.log_file = self.root / "postgres.log"
        self.password_file = self.root / "password"
        self.host = host
        self.port = port
        self.durable = durable
        self.proc: subprocess.Popen[bytes] | None = None
        self._run_as: pwd.struct_passwd | None = None
        # the per-run directory holding the cluster when its user cannot reach var/pg/data
        # (as root in a 0700 home); removed at stop
        self.fallback: Path | None = None
        if os.geteuid() == 0:
            self._run_as = _unprivileged_user()

    def _choose_data_dir(self) -> None:
        """As root, put the cluster where its user can reach it (see FALLBACK_PARENTS)."""
        if self._run_as is None or self.fallback is not None:
            return
        blocked = _first_unreachable(self.root, self._run_as)
        if blocked is None:
            return
        self.fallback = _make_fallback_dir(self.root, self._run_as, blocked)
        self.data = self.fallback / "data"
        log.info("private postgresql runs in a per-run directory", path=str(self.fallback),
                 reason=f"user {self._run_as.pw_name} cannot enter {blocked}",
                 removed="when postroom up stops")

    @property
    def url(self) -> str:
        password = self.password_file.read_text().strip()
        return (f"postgresql+psycopg2://{PG_USER}:{password}@{self.host}:{self.port}/"
                f"{PG_DATABASE}")

    def _argv(self, *argv: str) -> list[str]:
        if self._run_as is None:
            return list(argv)
        user = self._run_as
        return [find_binary("setpriv"), f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
                "--init-groups", "--", *argv]

    def _chown(self, path: Path) -> None:
        if self._run_as is not None:
            os.chown(path, self._run_as.pw_uid, self._run_as.pw_gid)

    def _initdb(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)  # noqa: S103 (no secrets here; the server user must reach data/ through it
        self._choose_data_dir()
        if not self.password_file.exists():
            self.password_file.write_text(secrets.token_urlsafe(24) + "\n")
            os.chmod(self.password_file, 0o600)
        if (self.data / "PG_VERSION").exists():
            return
        self.data.mkdir(mode=0o700, exist_ok=True)
        self._chown(self.data)
        # initdb wants an empty data directory, and the server user must read this file
        pwfile = self.data.parent / ".initdb-password"
        pwfile.write_text(self.password_file.read_text())
        os.chmod(pwfile, 0o600)
        self._chown(pwfile)
        try:
            _check_reachable(self.data, self._run_as)
            result = subprocess.run(
                self._argv(find_binary("initdb"), "-D", str(self.data), "-U", PG_USER,
                           "--pwfile", str(pwfile), "-E", "UTF8", "--locale=C",
                           # local socket: only the server's own user; TCP: our password
                           "--auth-local=peer", "--auth-host=scram-sha-256"),
                capture_output=True, timeout=120, check=False)
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            tail = result.stderr.decode(errors="replace").strip().splitlines()[-1:]
            raise InfraError(f"initdb failed: {' '.join(tail) or result.returncode}")
        log.info("private postgresql initialised", data=str(self.data))

    def start(self, timeout: float = 60.0) -> str:
        """Initialise once, start, create the database if missing; returns the URL."""
        self._initdb()
        if self.port is None:
            self.port = free_port(self.host)
        options = ["-c", "max_connections=200", "-c", "listen_addresses=" + self.host]
        if not self.durable:
            options += ["-c", "fsync=off", "-c", "synchronous_commit=off",
                        "-c", "full_page_writes=off"]
        self.log_file.touch()
        self._chown(self.log_file)
        with open(self.log_file, "ab") as out:
            self.proc = subprocess.Popen(
                self._argv(find_binary("postgres"), "-D", str(self.data), "-p", str(self.port),
                           "-k", str(self.data), *options),
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)  # Ctrl-C goes to us; we stop it in order
        _wait_port(self.host, self.port, self.proc, timeout, "postgres", self.log_file)
        self._create_database(timeout)
        log.info("private postgresql started", pid=self.proc.pid, port=self.port)
        return self.url

    def _create_database(self, timeout: float) -> None:
        import psycopg2

        deadline = time.monotonic() + timeout
        password = self.password_file.read_text().strip()
        while True:
            try:
                conn = psycopg2.connect(host=self.host, port=self.port, user=PG_USER,
                                        password=password, dbname="postgres", connect_timeout=5)
                break
            except psycopg2.OperationalError:
                # the port opens a moment before the server accepts logins
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{PG_DATABASE}"')
        finally:
            conn.close()

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT: roll back sessions, checkpoint), SIGKILL as a last resort."""
        if self.proc is not None:
            _stop_process(self.proc, signal.SIGINT, timeout)
            log.info("private postgresql stopped", pid=self.proc.pid)
            self.proc = None
        if self.fallback is not None:
            shutil.rmtree(self.fallback, ignore_errors=True)
            log.info("private postgresql directory removed", path=str(self.fallback))
            self.fallback = None


class PrivateRedis:
    """A Redis in ``<var>/redis`` on a loopback port; nothing on disk unless ``persist``."""

    def __init__(self, var_dir: str | Path, *, host: str = "127.0.0.1", port: int | None = None,
                 persist: bool = False) -> None:
        self.root = Path(var_dir).resolve() / "redis"
        self.log_file = self.root / "redis.log"
        self.host = host
        self.port = port
        self.persist = persist
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout: float = 30.0) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.port is None:
            self.port = free_port(self.host)
        persistence = (["--appendonly", "yes"] if self.persist
                       else ["--save", "", "--appendonly", "no"])
        self.proc = subprocess.Popen(
            [find_binary("redis-server"), "--bind", self.host, "--port", str(self.port),
             "--dir", str(self.root), "--logfile", str(self.log_file), "--daemonize", "no",
             "--protected-mode", "yes", *persistence],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        _wait_port(self.host, self.port, self.proc, timeout, "redis-server", self.log_file)
        log.info("private redis started", pid=self.proc.pid, port=self.port)
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None:
            _stop_process(self.proc, signal.SIGTERM, timeout)
            log.info("private redis stopped", pid=self.proc.pid)
            self.proc = None


def _unprivileged_user() -> pwd.struct_passwd:
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise InfraError("running as root and neither a 'postgres' nor a 'nobody' user exists; "
                     "PostgreSQL refuses to run as root")


def _can_enter(path: Path, user: pwd.struct_passwd) -> bool:
    st = path.stat()
    if st.st_uid == user.pw_uid:
        return bool(st.st_mode & 0o100)
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
    if st.st_gid in groups:
        return bool(st.st_mode & 0o010)
    return bool(st.st_mode & 0o001)


def _first_unreachable(path: Path, user: pwd.struct_passwd) -> Path | None:
    """The first existing directory on the way to ``path`` that ``user`` cannot enter."""
    for directory in [*reversed(path.parents), path]:
        if directory.exists() and not _can_enter(directory, user):
            return directory
    return None


def _check_reachable(path: Path, user: pwd.struct_passwd | None) -> None:
    """Fail clearly when the server user cannot traverse to ``path``'s directory."""
    if user is None:
        return
    blocked = _first_unreachable(path.parent, user)
    if blocked is not None:
        raise InfraError(f"user {user.pw_name} cannot enter {blocked}; set POSTROOM_VAR_DIR "
                         "to a directory it can reach (e.g. under /tmp or /srv)")


# As root, PostgreSQL runs as an unprivileged user that often cannot reach the checkout
# (root's home is 0700). Its cluster then lives for one run in a fresh directory here.
FALLBACK_PARENTS = ("/var/tmp", "/tmp")  # noqa: S108 (mkdtemp: random name, 0700, atomic)


def fallback_prefix(wanted: Path) -> str:
    """The name every per-run directory standing in for ``wanted`` starts with."""
    return f"postroom-pg-{hashlib.sha256(str(wanted).encode()).hexdigest()[:12]}-"


def _make_fallback_dir(wanted: Path, user: pwd.struct_passwd, blocked: Path) -> Path:
    """A new per-run directory for the cluster, 0700 and owned by ``user``.

    Its name says which checkout it serves (a hash of ``wanted``) so that one
    left behind by a killed run of the same checkout is found and removed the
    next time, once no postmaster runs in it. mkdtemp makes it atomically with
    a random suffix and mode 0700, so nobody else on the machine can have
    planted it; it is handed to ``user`` only after that.
    """
    prefix = fallback_prefix(wanted)
    for parent in map(Path, FALLBACK_PARENTS):
        if parent.is_dir() and _first_unreachable(parent, user) is None:
            _remove_stale(parent, prefix, user)
            path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
            os.chown(path, user.pw_uid, user.pw_gid)
            return path
    raise InfraError(f"user {user.pw_name} cannot enter {blocked} nor any of "
                     f"{', '.join(FALLBACK_PARENTS)}; set POSTROOM_VAR_DIR to a directory it "
                     "can reach")


def _remove_stale(parent: Path, prefix: str, user: pwd.struct_passwd) -> None:
    """Remove this checkout's fallback directories whose postmaster is gone (a killed run)."""
    for path in parent.glob(prefix + "*"):
        try:
            st = path.lstat()
        except OSError:
            continue
        if not path.is_dir() or path.is_symlink() or st.st_uid != user.pw_uid:
            continue
        if _postmaster_alive(path / "data" / "postmaster.pid"):
            continue
        shutil.rmtree(path, ignore_errors=True)
        log.info("stale private postgresql directory removed", path=str(path))


def _postmaster_alive(pid_file: Path) -> bool:
    try:
        pid = int(pid_file.read_text().split("\n", 1)[0])
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        return True  # unreadable or odd: leave it alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LocalInfra:
    """The private servers `postroom up` started, stopped in reverse order."""

    def __init__(self, var_dir: str | Path, *, host: str = "127.0.0.1", durable: bool = True):
        self.var_dir = Path(var_dir)
        self.host = host
        self.durable = durable
        self.postgres: PrivatePostgres | None = None
        self.redis: PrivateRedis | None = None

    def start_postgres(self) -> str:
        self.postgres = PrivatePostgres(self.var_dir, host=self.host, durable=self.durable)
        return self.postgres.start()

    def start_redis(self) -> str:
        self.redis = PrivateRedis(self.var_dir, host=self.host)
        return self.redis.start()

    def stop(self) -> None:
        if self.redis is not None:
            self.redis.stop()
        if self.postgres is not None:
            self.postgres.stop()
