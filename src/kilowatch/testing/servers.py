"""Real mosquitto and redis-server processes on ports the OS hands out.

Each server is a context manager: it starts the process, waits until the port accepts
connections (no sleeps), and stops it on exit. Brokers are configured so they cannot drop
messages for a slow subscriber (``max_queued_messages 0``, unlimited in-flight), so any loss a
test sees is ours.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from kilowatch.errors import KilowatchError

START_TIMEOUT_S = 15.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(
    host: str,
    port: int,
    *,
    timeout: float = START_TIMEOUT_S,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    """Block until ``host:port`` accepts a TCP connection (or raise after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise KilowatchError(
                f"server process exited with code {proc.returncode} before {port} opened"
            )
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise KilowatchError(
                    f"nothing accepted connections on {host}:{port} within {timeout}s"
                ) from None
            time.sleep(0.01)


def _binary(name: str, *candidates: str) -> str:
    for c in (name, *candidates):
        path = shutil.which(c)
        if path:
            return path
    for c in (f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if Path(c).exists():
            return c
    raise KilowatchError(f"{name} is not installed; install it with: apt-get install {name}")


class _Process:
    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="kilowatch-test-")
        self.dir = Path(self._tmp.name)

    def _spawn(self, argv: list[str], port: int) -> None:
        log = (self.dir / "server.log").open("wb")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        wait_for_port("127.0.0.1", port, proc=self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self._tmp.cleanup()

    def start(self) -> None:
        raise NotImplementedError


class MosquittoServer(_Process):
    """``mosquitto`` on a free port, lossless for slow subscribers; optional username/password."""

    def __init__(self, *, users: dict[str, str] | None = None, extra_config: str = "") -> None:
        super().__init__()
        self.port = free_port()
        self.users = users or {}
        self.extra_config = extra_config

    @property
    def url(self) -> str:
        if self.users:
            user, password = next(iter(self.users.items()))
            return f"mqtt://{user}:{password}@127.0.0.1:{self.port}"
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        lines = [
            f"listener {self.port} 127.0.0.1",
            "persistence false",
            "max_queued_messages 0",  # 0 = unlimited: the broker never drops for a slow subscriber
            "max_inflight_messages 0",
            "max_keepalive 3600",
            "set_tcp_nodelay true",  # as the managed mosquitto: small RPC frames are not held back
            "log_dest stdout",
            "log_type error",
            "log_type warning",
        ]
        if os.geteuid() == 0:
            # As root mosquitto drops to the user "mosquitto", who cannot read this private temp
            # dir (password file, TLS material); stay root for these throwaway test brokers.
            lines.append("user root")
        if self.users:
            pw = self.dir / "passwd"
            pw.write_text("")
            tool = _binary("mosquitto_passwd")
            for user, password in self.users.items():
                subprocess.run([tool, "-b", str(pw), user, password], check=True)
            lines += [f"password_file {pw}", "allow_anonymous false"]
        else:
            lines.append("allow_anonymous true")
        conf = self.dir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n" + self.extra_config)
        self._spawn([_binary("mosquitto"), "-c", str(conf)], self.port)


def _cluster_port() -> int:
    """A free port whose cluster-bus twin (port + 10000) is free too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class RedisServer(_Process):
    """``redis-server`` on a free port, in memory only."""

    def __init__(self, *, password: str | None = None, cluster: bool = False) -> None:
        super().__init__()
        self.port = _cluster_port() if cluster else free_port()
        self.password = password
        self.cluster = cluster

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = [
            _binary("redis-server"),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.dir),
        ]  # fmt: skip
        if self.password:
            argv += ["--requirepass", self.password]
        if self.cluster:
            argv += [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(self.dir / "nodes.conf"),
            ]
        self._spawn(argv, self.port)


class RedisClusterServer:
    """A Redis Cluster of ``masters`` nodes (no replicas) on free ports; redis-cli spreads slots."""

    def __init__(self, masters: int = 3) -> None:
        self.nodes = [RedisServer(cluster=True) for _ in range(masters)]

    @property
    def url(self) -> str:
        return "redis://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes) + "/0"

    def __enter__(self) -> Self:
        for n in self.nodes:
            n.__enter__()
        addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(
            [_binary("redis-cli", "redis-cli"), "--cluster", "create", *addrs, "--cluster-yes"],
            check=True,
            capture_output=True,
        )
        self._wait_ok()
        return self

    def _wait_ok(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        cli = _binary("redis-cli")
        while time.monotonic() < deadline:
            out = subprocess.run(
                [cli, "-p", str(self.nodes[0].port), "cluster", "info"],
                capture_output=True,
                text=True,
            ).stdout
            if "cluster_state:ok" in out:
                return
            time.sleep(0.05)
        raise KilowatchError("redis cluster did not reach cluster_state:ok")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for n in self.nodes:
            n.__exit__(exc_type, exc, tb)
