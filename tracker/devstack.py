"""Local Redis and PostgreSQL servers for `make run` and the test suite.

Each server lives in a directory of its own. PostgreSQL refuses to run as
root, so when we are root its files belong to, and it runs as, `postgres`.
"""

import glob
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis as redis_sync


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pg_bindir() -> Path:
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: int(path.split("/")[4]),
        reverse=True,
    )
    if candidates:
        return Path(candidates[0]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError("PostgreSQL server binaries not found; run `make setup`")
    return Path(initdb).parent


def _as_postgres(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


def wait_for_port(port: int, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not start listening on port {port}")


class PostgresServer:
    def __init__(self, root: Path, port: int, fast_unsafe: bool = False) -> None:
        self.root = root
        self.data = root / "data"
        self.log = root / "postgres.log"
        self.port = port
        self.fast_unsafe = fast_unsafe
        self.bindir = _pg_bindir()

    def dsn(self, database: str = "tracker") -> str:
        return f"postgresql://tracker@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        if not (self.data / "PG_VERSION").exists():
            subprocess.run(
                _as_postgres(
                    [
                        str(self.bindir / "initdb"),
                        "-D",
                        str(self.data),
                        "-U",
                        "tracker",
                        "--auth=trust",
                        "-E",
                        "UTF8",
                        "--no-locale",
                    ]
                ),
                check=True,
                stdout=subprocess.DEVNULL,
            )
        options = f"-p {self.port} -k '' -c listen_addresses=127.0.0.1 -c max_connections=200"
        if self.fast_unsafe:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        subprocess.run(
            _as_postgres(
                [
                    str(self.bindir / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.log),
                    "-o",
                    options,
                    "-w",
                    "start",
                ]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        wait_for_port(self.port, "PostgreSQL")
        self.create_database("tracker")

    def create_database(self, name: str, template: str | None = None) -> None:
        psql = [str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "tracker"]
        exists = subprocess.run(
            [
                *psql,
                "-d",
                "postgres",
                "-tAc",
                f"SELECT 1 FROM pg_database WHERE datname = '{name}'",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        if not exists:
            clause = f" TEMPLATE {template}" if template else ""
            subprocess.run(
                [*psql, "-d", "postgres", "-qc", f'CREATE DATABASE "{name}"{clause}'],
                check=True,
            )

    def stop(self) -> None:
        subprocess.run(
            _as_postgres([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop"]),
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )


class RedisServer:
    def __init__(self, root: Path, port: int, persistent: bool = True) -> None:
        self.root = root
        self.port = port
        self.persistent = persistent
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    @property
    def socket_path(self) -> Path:
        return self.root / "redis.sock"

    def unix_url(self, db: int = 0) -> str:
        """The same server on its Unix socket (no TCP stack between it and a local client)."""
        return f"unix://{self.socket_path}?db={db}"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found; run `make setup`")
        self.root.mkdir(parents=True, exist_ok=True)
        # Persistent (`make run`): every write in the append-only file, synced each second;
        # and never evict: a click record or stream entry silently dropped is a lost click.
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "everysec"]
            if self.persistent
            else ["--save", "", "--appendonly", "no"]
        )
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--unixsocket",
                str(self.socket_path),
                "--unixsocketperm",
                "700",
                "--dir",
                str(self.root),
                "--logfile",
                str(self.root / "redis.log"),
                *persistence,
                "--maxmemory-policy",
                "noeviction",
            ],
            stdout=subprocess.DEVNULL,
            # Its own session: a Ctrl-C meant for the tracker must not stop Redis under it.
            start_new_session=True,
        )
        wait_for_port(self.port, "Redis")
        client = redis_sync.Redis(port=self.port)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis_sync.BusyLoadingError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None


def start_replica(primary: PostgresServer, root: Path, port: int) -> PostgresServer:
    """A streaming replica of the running `primary`, copied with `pg_basebackup -R`
    into `root` and started on `port`; read-only, it replays what the primary writes.
    Relies on the primary's default `wal_level=replica` and its pg_hba.conf, which
    trusts replication connections from 127.0.0.1 (as initdb writes it)."""
    replica = PostgresServer(root, port, fast_unsafe=primary.fast_unsafe)
    root.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    if not (replica.data / "PG_VERSION").exists():
        subprocess.run(
            _as_postgres(
                [
                    str(replica.bindir / "pg_basebackup"),
                    *("-h", "127.0.0.1", "-p", str(primary.port), "-U", "tracker"),
                    *("-D", str(replica.data), "-R", "-X", "stream", "-c", "fast"),
                    # A copy that need not survive a crash (tests) is not synced: ~4 s less.
                    *(["--no-sync"] if primary.fast_unsafe else []),
                ]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )
    replica.start()  # finds the copied cluster; `tracker` exists, so nothing is created
    return replica


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (the port + 10000) is free too."""
    while True:
        with socket.socket() as sock, socket.socket() as bus:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
            if port + 10000 > 65535:
                continue
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
            return port


class RedisClusterServer:
    """A Redis Cluster of `masters` masters with a replica each, on free loopback ports,
    each node in a directory of its own under `root` (tests and the bench)."""

    def __init__(self, root: Path, masters: int = 3, node_timeout_ms: int = 1000) -> None:
        self.root = root
        self.masters = masters
        self.node_timeout_ms = node_timeout_ms
        self.ports: list[int] = []
        while len(self.ports) < masters * 2:
            port = _free_cluster_port()
            # Neither a node's port nor its bus port (+10000) may be another node's.
            taken = {
                *self.ports,
                *(p + 10000 for p in self.ports),
                *(p - 10000 for p in self.ports),
            }
            if port not in taken:
                self.ports.append(port)
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    def url(self) -> str:
        """One node's URL: the client finds the rest."""
        return f"redis://127.0.0.1:{self.ports[0]}"

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        for port in self.ports:
            self.start_node(port)
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli not found; run `make setup`")
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{port}" for port in self.ports),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.wait_until_ok()
        self.wait_for_replicas()

    def wait_for_replicas(self, timeout: float = 30.0) -> None:
        """Until every live master has a replica in sync with it."""
        deadline = time.monotonic() + timeout
        while True:
            synced = []
            for port, role in self.roles().items():
                if role != "master":
                    continue
                with self.node(port) as client:
                    replicas = client.execute_command("ROLE")[2]
                synced.append(bool(replicas) and all(int(r[2]) > 0 for r in replicas))
            if all(synced):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis cluster's replicas are not in sync")
            time.sleep(0.1)

    def start_node(self, port: int) -> None:
        """Start (or restart, with its cluster state) the node on `port`."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found; run `make setup`")
        directory = self.root / str(port)
        directory.mkdir(parents=True, exist_ok=True)
        self.processes[port] = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(directory),
                "--logfile",
                str(directory / "redis.log"),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                str(self.node_timeout_ms),
                # A replica of a master that died takes over however far behind it was.
                "--cluster-replica-validity-factor",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
                "--maxmemory-policy",
                "noeviction",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for_port(port, "Redis cluster node")

    def node(self, port: int) -> "redis_sync.Redis":
        return redis_sync.Redis(port=port, socket_timeout=2)

    def info(self, port: int) -> dict[str, str]:
        """CLUSTER INFO of one node."""
        with self.node(port) as client:
            text = client.execute_command("CLUSTER", "INFO")
        text = text.decode() if isinstance(text, bytes) else str(text)
        return dict(line.split(":", 1) for line in text.split() if ":" in line)

    def roles(self) -> dict[int, str]:
        """Each live node's role: master or slave."""
        roles = {}
        for port, process in self.processes.items():
            if process.poll() is not None:
                continue
            with self.node(port) as client:
                role = client.execute_command("ROLE")[0]
            roles[port] = role.decode() if isinstance(role, bytes) else str(role)
        return roles

    def replica_of(self, master_port: int) -> int:
        """The port of the live replica of the master on `master_port`."""
        deadline = time.monotonic() + 10
        while True:
            with self.node(master_port) as client:
                replicas = client.execute_command("ROLE")[2]
            if replicas:
                return int(replicas[0][1])
            if time.monotonic() > deadline:
                raise RuntimeError(f"the master on {master_port} has no replica")
            time.sleep(0.05)

    def wait_until_ok(self, timeout: float = 30.0) -> None:
        """Until every live node says the cluster is ok with all slots served, and
        agrees on the masters."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                live = [p for p, proc in self.processes.items() if proc.poll() is None]
                infos = [self.info(port) for port in live]
                if (
                    all(
                        i.get("cluster_state") == "ok" and i.get("cluster_slots_ok") == "16384"
                        for i in infos
                    )
                    and list(self.roles().values()).count("master") == self.masters
                ):
                    return
            except (redis_sync.RedisError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis cluster did not become ok")
            time.sleep(0.1)

    def failover(self, replica_port: int, timeout: float = 10.0) -> None:
        """`CLUSTER FAILOVER` on the replica on `replica_port`; returns once it is master."""
        with self.node(replica_port) as client:
            client.execute_command("CLUSTER", "FAILOVER")
        deadline = time.monotonic() + timeout
        while self.roles().get(replica_port) != "master":
            if time.monotonic() > deadline:
                raise RuntimeError(f"the replica on {replica_port} did not take over")
            time.sleep(0.02)

    def kill(self, port: int) -> None:
        """`kill -9` the node on `port`."""
        process = self.processes[port]
        process.kill()
        process.wait(timeout=10)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            process.wait(timeout=30)
        self.processes.clear()
