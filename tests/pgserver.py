"""A throwaway PostgreSQL server for tests: ``initdb`` + ``pg_ctl`` from Debian's
``postgresql`` package, in a temporary directory, on 127.0.0.1 and a free port.

PostgreSQL refuses to run as root: as root the cluster belongs to the ``postgres`` user
(``runuser``). Tests skip with a reason where the binaries are absent.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["find_bin", "postgres_server"]


def find_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with initdb and pg_ctl, if any."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: p.split("/")[4])
    if not found:
        return None
    return Path(found[-1]).parent


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Start a cluster; yields the URL of its ``postgres`` database (user ``edgecloud``,
    trust auth on loopback); stops and deletes it on exit.

    Raises:
        RuntimeError: no PostgreSQL binaries, or as root without a ``postgres`` user.
    """
    bindir = find_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL binaries not found (apt-get install postgresql)")
    prefix: list[str] = []
    owner = None
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            raise RuntimeError("running as root and runuser is missing")
        import pwd

        try:
            owner = pwd.getpwnam("postgres")
        except KeyError as exc:
            raise RuntimeError("running as root and there is no postgres user") from exc
        prefix = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="edgecloud-pg-"))
    data = root / "data"
    if owner is not None:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def run(*args: str) -> None:
        subprocess.run([*prefix, *args], check=True, capture_output=True, timeout=120)

    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", "edgecloud", "--auth=trust",
            "--no-sync")  # fmt: skip
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o",
            f"-p {port} -h 127.0.0.1 -k {root} -c fsync=off", "start")  # fmt: skip
        try:
            yield f"postgresql://edgecloud@127.0.0.1:{port}/postgres"
        finally:
            run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)
