"""The local stack's child processes, one function each: PostgreSQL+PostGIS, Redis,
Triton, a Celery worker and the API.

A `Component` says how to prepare, start, probe and stop one process; `tilesight.stack`
starts them in the order `stack_components` gives and stops them in reverse.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tilesight.settings import LOOPBACK, Settings
from tilesight.tasks import Queue
from tilesight.tritonserver import TritonLayout

PG_BIN = Path("/usr/lib/postgresql/15/bin")


class StackError(RuntimeError):
    """A component could not start; the message says what to do about it."""


@dataclass
class Component:
    """One child process of the stack."""

    name: str
    port: int
    command: Callable[[], list[str]]
    healthy: Callable[[], bool]
    prepare: Callable[[], None] = lambda: None
    after_start: Callable[[], None] = lambda: None
    env: dict[str, str] = field(default_factory=dict)
    run_as: str | None = None
    start_timeout_s: float = 60.0
    stop_signal: int = signal.SIGTERM
    stop_timeout_s: float = 20.0


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as `TILESIGHT_*` variables, so every child sees the same configuration."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump(mode="json").items():
        text = json.dumps(value) if isinstance(value, list | dict) else str(value)
        env[f"TILESIGHT_{name.upper()}"] = text
    return env


def stack_components(settings: Settings, worker_name: str) -> list[Component]:
    """Every component, in the order they start (each needs the ones before it)."""
    env = {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1"}
    return [
        postgres(settings, env),
        redis_server(settings, env),
        triton(settings, env),
        worker(settings, env, worker_name),
        api(settings, env),
    ]


def postgres(s: Settings, env: dict[str, str]) -> Component:
    """PostgreSQL with trust auth, so it listens on loopback only; run as `postgres` when
    the stack runs as root (initdb refuses root)."""
    as_root = os.geteuid() == 0
    data = s.home / "postgres"
    sock = s.home / "run" / "pgsock"

    def prepare() -> None:
        sock.mkdir(parents=True, exist_ok=True)
        if as_root:
            _make_traversable(s.home)
            uid = pwd.getpwnam("postgres").pw_uid
            for p in (sock, data):
                p.mkdir(parents=True, exist_ok=True)
                os.chown(p, uid, -1)
        if not (data / "PG_VERSION").exists():
            data.mkdir(parents=True, exist_ok=True)
            initdb = [str(PG_BIN / "initdb"), "-D", str(data), "-U", "tilesight"]
            _run(
                [*initdb, "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"],
                run_as="postgres" if as_root else None,
            )

    def create_database() -> None:
        import psycopg

        url = f"host={LOOPBACK} port={s.postgres_port} user=tilesight dbname=postgres"
        with psycopg.connect(url, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = 'tilesight'")
            if not exists.fetchone():
                conn.execute("CREATE DATABASE tilesight")

    def healthy() -> bool:
        probe = [str(PG_BIN / "pg_isready"), "-h", LOOPBACK, "-p", str(s.postgres_port)]
        result = subprocess.run([*probe, "-U", "tilesight", "-d", "postgres", "-q"], check=False)
        return result.returncode == 0

    return Component(
        "postgres",
        s.postgres_port,
        lambda: [
            str(PG_BIN / "postgres"),
            "-D",
            str(data),
            "-p",
            str(s.postgres_port),
            "-k",
            str(sock),
            "-c",
            f"listen_addresses={LOOPBACK}",  # trust auth: never beyond loopback
            "-c",
            "fsync=on",
            "-c",
            "max_connections=200",
        ],  # fmt: skip
        healthy,
        prepare=prepare,
        after_start=create_database,
        env=env,
        run_as="postgres" if as_root else None,
        stop_signal=signal.SIGINT,  # "fast" shutdown
    )


def redis_server(s: Settings, env: dict[str, str]) -> Component:
    """Redis without a password, so on loopback only, with an append-only file."""
    folder = s.home / "redis"

    def healthy() -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(s.redis_url, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    return Component(
        "redis",
        s.redis_port,
        lambda: [
            shutil.which("redis-server") or "redis-server",
            "--port",
            str(s.redis_port),
            "--bind",
            LOOPBACK,  # no password: never beyond loopback
            "--dir",
            str(folder),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--protected-mode",
            "yes",
        ],  # fmt: skip
        healthy,
        prepare=lambda: folder.mkdir(parents=True, exist_ok=True),
        env=env,
    )


def triton(s: Settings, env: dict[str, str]) -> Component:
    """tritonserver over model_repo/, laid out and sized by tilesight.tritonserver."""
    layout = TritonLayout(s)
    return Component(
        "triton",
        s.triton_grpc_port,
        layout.command,
        lambda: _http_ok(f"http://{s.triton_http_url}/v2/health/live"),
        prepare=layout.prepare,
        after_start=layout.load_models,
        env={**env, **layout.env()},
        start_timeout_s=120.0,
        stop_timeout_s=10.0,
    )


def worker(s: Settings, env: dict[str, str], name: str) -> Component:
    """One Celery worker on both queues, one task at a time; healthy once it answers a
    ping under its own name (another stack's worker on the same broker does not count)."""

    def healthy() -> bool:
        from celery import Celery

        app = Celery(broker=s.celery_broker_url)
        try:
            replies = app.control.ping(timeout=1.0)
        except Exception:
            return False
        finally:
            app.close()
        return any(worker.startswith(f"{name}@") for r in replies for worker in r)

    return Component(
        "worker",
        0,
        lambda: [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker.app",
            "worker",
            "-Q",
            ",".join(q.value for q in Queue),
            "-c",
            "1",
            "--prefetch-multiplier",
            "1",
            "-n",
            f"{name}@%h",
            "--without-gossip",
            "--without-mingle",
            "-l",
            "INFO",
        ],  # fmt: skip
        healthy,
        env=env,
        start_timeout_s=90.0,
        stop_timeout_s=30.0,
    )


def api(s: Settings, env: dict[str, str]) -> Component:
    """uvicorn serving `api.main:create_app` on the configured host and port."""
    return Component(
        "api",
        s.api_port,
        lambda: [
            sys.executable,
            "-m",
            "uvicorn",
            "api.main:create_app",
            "--factory",
            "--host",
            s.host,
            "--port",
            str(s.api_port),
            "--timeout-graceful-shutdown",
            "10",
            "--no-access-log",
            "--no-server-header",
            # X-Forwarded-For is read by the app, from trusted_proxies only
            "--no-proxy-headers",
        ],  # fmt: skip
        lambda: _http_ok(f"{s.api_url}/healthz"),
        env=env,
    )


def identity(user: str | None) -> dict[str, Any]:
    """Popen arguments to run as `user` with its own group (not root's, which would match
    the group of root-owned directories and lose the "other" permissions we rely on)."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= response.status < 300
    except OSError:
        return False


def _run(cmd: list[str], run_as: str | None = None) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, check=False, **identity(run_as))
    if result.returncode != 0:
        raise StackError(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}")


def _make_traversable(path: Path) -> None:
    """PostgreSQL runs as the `postgres` user, which must be able to reach its data dir."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001 and parent.owner() == pwd.getpwuid(os.geteuid()).pw_name:
            parent.chmod(mode | 0o001)
