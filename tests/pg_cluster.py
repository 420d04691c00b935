"""A throwaway PostgreSQL server for tests: initdb + pg_ctl in a temp dir, listening on a unix socket only.

    with PostgresCluster() as pg:
        url = pg.url("bertedge")   # postgresql+psycopg2://postgres@/bertedge?host=SOCKET_DIR&port=PORT

The binaries come from /usr/lib/postgresql/*/bin (Debian's `postgresql` package) or PATH. PostgreSQL refuses to run
as root, so as root the cluster belongs to the `postgres` user (created by the package) and its commands run through
`runuser -u postgres`. No TCP port is opened (listen_addresses=''), authentication is `trust` on the socket, and
`stop()` (or leaving the block) shuts it down and deletes everything.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path


def pg_bin_dir() -> Path | None:
    """The directory holding initdb and pg_ctl, newest version first; None when PostgreSQL is not installed."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version, reverse=True):
        if (Path(candidate) / "initdb").is_file() and (Path(candidate) / "pg_ctl").is_file():
            return Path(candidate)
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).resolve().parent
    return None


def _version(path: str) -> float:
    try:
        return float(Path(path).parent.name)
    except ValueError:
        return 0.0


class PostgresCluster:
    def __init__(self, port: int = 5432):
        self.bin = pg_bin_dir()
        if self.bin is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install -y postgresql)")
        self.port = port
        # A short path: a unix socket path may not exceed ~107 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="bepg-", dir="/tmp"))
        self.data = self.root / "data"
        self.user = None
        if os.geteuid() == 0:
            import pwd

            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root and there is no `postgres` user to run PostgreSQL as") from None
            self.user = "postgres"
            shutil.chown(self.root, user="postgres", group=None)
        self.started = False

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(a) for a in args]
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=self.root,
                              check=False)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stdout[-2000:]}")
        return done

    def start(self) -> PostgresCluster:
        self._run(self.bin / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync",
                  "-E", "UTF8", "--locale", "C")
        options = f"-k {self.root} -c listen_addresses='' -p {self.port} -F -c max_connections=50"
        self._run(self.bin / "pg_ctl", "-D", self.data, "-o", options, "-l", self.root / "server.log", "-w",
                  "-t", "120", "start")
        self.started = True
        return self

    def create_database(self, name: str) -> str:
        self._run(self.bin / "createdb", "-h", self.root, "-p", str(self.port), "-U", "postgres", name)
        return self.url(name)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://postgres@/{database}?host={self.root}&port={self.port}"

    def log(self) -> str:
        try:
            return (self.root / "server.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.started:
            self._run(self.bin / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop", check=False)
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
