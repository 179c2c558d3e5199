"""The local stack: PostgreSQL+PostGIS, Redis, Triton, a Celery worker and the API.

`tilesight up` and the integration tests both start the stack through this module, so
what the tests exercise is what a user runs. Each component is a child process with a
pid file and a log under `<home>/run/`, started in dependency order and awaited until
it answers; `stop()` (Ctrl-C, `tilesight down`) ends them in reverse order.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tilesight.exposure import ExposureRefused, check_exposure
from tilesight.settings import LOOPBACK, PROJECT_ROOT, Settings
from tilesight.tritonserver import TritonLayout

log = logging.getLogger(__name__)

PG_BIN = Path("/usr/lib/postgresql/15/bin")


class StackError(RuntimeError):
    """A component could not start; the message says what to do about it."""


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PORT_SETTINGS = ("api", "postgres", "redis", "triton_http", "triton_grpc", "triton_metrics")


def isolated_settings(home: Path, **overrides: Any) -> Settings:
    """Settings for a private stack (tests, benchmarks): every port free and all state
    under `home`, so it runs beside a developer's own stack without touching it."""
    ports = {f"{name}_port": free_port() for name in PORT_SETTINGS}
    return Settings(**{"environment": "test", "home": home, **ports, **overrides})


def bring_up(
    stack: Stack, *, demo: bool = True, on_line: Callable[[str], None] = lambda line: None
) -> None:
    """Start the stack, migrate as soon as PostgreSQL answers, then load the demo data;
    `on_line` hears one line per step. What `tilesight up`, the tests and benchmarks share."""
    from tilesight.db import migrate

    def ready(name: str) -> None:
        on_line(f"{name} ready")
        if name == "postgres":
            migrate(stack.settings)
            on_line("migrations applied")

    stack.start(on_ready=ready)
    if demo:
        from tilesight.demo import load_demo

        for line in load_demo(stack.settings):
            on_line(line)


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as `TILESIGHT_*` variables, so every child sees the same configuration."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump(mode="json").items():
        text = json.dumps(value) if isinstance(value, list | dict) else str(value)
        env[f"TILESIGHT_{name.upper()}"] = text
    return env


def _http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= response.status < 300
    except OSError:
        return False


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


class Stack:
    """Starts, watches and stops the local components for one `Settings`."""

    def __init__(self, settings: Settings, components: list[str] | None = None) -> None:
        self.settings = settings
        self.run_dir = settings.run_dir
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        all_components = self._components()
        wanted = components or [c.name for c in all_components]
        self.components = [c for c in all_components if c.name in wanted]

    # -- component definitions -------------------------------------------------

    def _components(self) -> list[Component]:
        s = self.settings
        base_env = {**os.environ, **settings_env(s), "PYTHONUNBUFFERED": "1"}
        as_root = os.geteuid() == 0
        pg_data = s.home / "postgres"
        pg_socket = s.home / "run" / "pgsock"

        def pg_prepare() -> None:
            pg_socket.mkdir(parents=True, exist_ok=True)
            if as_root:
                _make_traversable(s.home)
                uid = pwd.getpwnam("postgres").pw_uid
                for p in (pg_socket, pg_data):
                    p.mkdir(parents=True, exist_ok=True)
                    os.chown(p, uid, -1)
            if not (pg_data / "PG_VERSION").exists():
                pg_data.mkdir(parents=True, exist_ok=True)
                _run(
                    [
                        str(PG_BIN / "initdb"),
                        "-D",
                        str(pg_data),
                        "-U",
                        "tilesight",
                        "--auth=trust",
                        "-E",
                        "UTF8",
                        "--locale=C.UTF-8",
                    ],
                    run_as="postgres" if as_root else None,
                )

        def pg_after() -> None:
            import psycopg

            url = f"host={LOOPBACK} port={s.postgres_port} user=tilesight dbname=postgres"
            with psycopg.connect(url, autocommit=True) as conn:
                exists = conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = 'tilesight'"
                ).fetchone()
                if not exists:
                    conn.execute("CREATE DATABASE tilesight")

        def pg_healthy() -> bool:
            result = subprocess.run(
                [
                    str(PG_BIN / "pg_isready"),
                    "-h",
                    LOOPBACK,
                    "-p",
                    str(s.postgres_port),
                    "-U",
                    "tilesight",
                    "-d",
                    "postgres",
                    "-q",
                ],
                check=False,
            )
            return result.returncode == 0

        redis_dir = s.home / "redis"

        def redis_healthy() -> bool:
            import redis

            try:
                return bool(redis.Redis.from_url(s.redis_url, socket_timeout=1).ping())
            except redis.RedisError:
                return False

        triton = TritonLayout(s)

        def worker_healthy() -> bool:
            from celery import Celery

            app = Celery(broker=s.celery_broker_url)
            try:
                replies = app.control.ping(timeout=1.0)
            except Exception:
                return False
            finally:
                app.close()
            return any(name.startswith(f"{self._worker_name}@") for r in replies for name in r)

        return [
            Component(
                "postgres",
                s.postgres_port,
                lambda: [
                    str(PG_BIN / "postgres"),
                    "-D",
                    str(pg_data),
                    "-p",
                    str(s.postgres_port),
                    "-k",
                    str(pg_socket),
                    "-c",
                    f"listen_addresses={LOOPBACK}",  # trust auth: never beyond loopback
                    "-c",
                    "fsync=on",
                    "-c",
                    "max_connections=200",
                ],
                pg_healthy,
                prepare=pg_prepare,
                after_start=pg_after,
                env=base_env,
                run_as="postgres" if as_root else None,
                stop_signal=signal.SIGINT,  # "fast" shutdown
            ),
            Component(
                "redis",
                s.redis_port,
                lambda: [
                    shutil.which("redis-server") or "redis-server",
                    "--port",
                    str(s.redis_port),
                    "--bind",
                    LOOPBACK,  # no password: never beyond loopback
                    "--dir",
                    str(redis_dir),
                    "--appendonly",
                    "yes",
                    "--save",
                    "",
                    "--protected-mode",
                    "yes",
                ],
                redis_healthy,
                prepare=lambda: redis_dir.mkdir(parents=True, exist_ok=True),
                env=base_env,
            ),
            Component(
                "triton",
                s.triton_grpc_port,
                triton.command,
                lambda: _http_ok(f"http://{s.triton_http_url}/v2/health/live"),
                prepare=triton.prepare,
                after_start=triton.load_models,
                env={**base_env, **triton.env()},
                start_timeout_s=120.0,
                stop_timeout_s=10.0,
            ),
            Component(
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
                    "gpu,cpu",
                    "-c",
                    "1",
                    "--prefetch-multiplier",
                    "1",
                    "-n",
                    f"{self._worker_name}@%h",
                    "--without-gossip",
                    "--without-mingle",
                    "-l",
                    "INFO",
                ],
                worker_healthy,
                env=base_env,
                start_timeout_s=90.0,
                stop_timeout_s=30.0,
            ),
            Component(
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
                ],
                lambda: _http_ok(f"{s.api_url}/healthz"),
                env=base_env,
            ),
        ]

    @property
    def _worker_name(self) -> str:
        return f"tilesight-{self.settings.api_port}"

    # -- lifecycle ---------------------------------------------------------------

    def check_ports(self) -> None:
        busy = [
            f"{c.name} port {c.port}"
            for c in self.components
            if c.port
            and not self._alive(c.name)
            and port_in_use(self.settings.host if c.name == "api" else LOOPBACK, c.port)
        ]
        if busy:
            raise StackError(
                "already in use: " + ", ".join(busy) + ". Stop what holds it, run "
                "`tilesight down`, or pick other ports (TILESIGHT_API_PORT, "
                "TILESIGHT_POSTGRES_PORT, TILESIGHT_REDIS_PORT, TILESIGHT_TRITON_*_PORT)."
            )

    def start(self, on_ready: Callable[[str], None] = lambda name: None) -> None:
        """Start every component not already running and wait until each answers."""
        if any(c.name == "api" for c in self.components):
            try:  # before anything starts, not when the API does
                check_exposure(self.settings)
            except ExposureRefused as exc:
                raise StackError(str(exc)) from None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.check_ports()
        for component in self.components:
            if self._alive(component.name) and component.healthy():
                on_ready(component.name)
                continue
            self.start_component(component)
            on_ready(component.name)

    def start_component(self, component: Component) -> None:
        component.prepare()
        log_path = self.run_dir / f"{component.name}.log"
        log_file = open(log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        proc = subprocess.Popen(
            component.command(),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=component.env or None,
            cwd=PROJECT_ROOT,
            start_new_session=True,
            **_identity(component.run_as),
        )
        log_file.close()
        self.processes[component.name] = proc
        self._pid_path(component.name).write_text(str(proc.pid))
        deadline = time.monotonic() + component.start_timeout_s
        while not component.healthy():
            if proc.poll() is not None:
                raise StackError(
                    f"{component.name} exited with code {proc.returncode}; "
                    f"see {log_path}:\n{_tail(log_path)}"
                )
            if time.monotonic() > deadline:
                raise StackError(
                    f"{component.name} did not become ready in {component.start_timeout_s:.0f}s; "
                    f"see {log_path}:\n{_tail(log_path)}"
                )
            time.sleep(0.25)
        component.after_start()

    def stop(self, names: list[str] | None = None) -> None:
        """Stop components in reverse order: first SIGTERM, then SIGKILL after a grace period."""
        for component in reversed(self.components):
            if names and component.name not in names:
                continue
            self.stop_component(component)

    def stop_component(self, component: Component) -> None:
        pid = self.pid(component.name)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, component.stop_signal)
        deadline = time.monotonic() + component.stop_timeout_s
        while _pid_alive(pid) and time.monotonic() < deadline:
            self._reap(component.name)
            time.sleep(0.1)
        if _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        self._reap(component.name, block=True)
        self._pid_path(component.name).unlink(missing_ok=True)

    def component(self, name: str) -> Component:
        return next(c for c in self.components if c.name == name)

    def status(self) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = []
        for c in self.components:
            pid = self.pid(c.name)
            alive = pid is not None and _pid_alive(pid)
            rows.append(
                {
                    "name": c.name,
                    "pid": pid if alive else None,
                    "port": c.port or None,
                    "running": alive,
                    "healthy": alive and c.healthy(),
                }
            )
        return rows

    def pid(self, name: str) -> int | None:
        path = self._pid_path(name)
        try:
            return int(path.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def watch(self) -> str | None:
        """The name of a component that died on its own, if any."""
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                return name
        return None

    def _alive(self, name: str) -> bool:
        pid = self.pid(name)
        return pid is not None and _pid_alive(pid)

    def _reap(self, name: str, block: bool = False) -> None:
        proc = self.processes.get(name)
        if proc is None:
            return
        try:
            proc.wait(timeout=5 if block else 0.001)
        except subprocess.TimeoutExpired:
            return
        self.processes.pop(name, None)

    def _pid_path(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"


def _run(cmd: list[str], run_as: str | None = None) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, check=False, **_identity(run_as))
    if result.returncode != 0:
        raise StackError(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}")


def _identity(user: str | None) -> dict[str, Any]:
    """Popen arguments to run as `user` with its own group (not root's, which would match
    the group of root-owned directories and lose the "other" permissions we rely on)."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _make_traversable(path: Path) -> None:
    """PostgreSQL runs as the `postgres` user, which must be able to reach its data dir."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001 and parent.owner() == pwd.getpwuid(os.geteuid()).pw_name:
            parent.chmod(mode | 0o001)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie still answers kill(0); treat it as gone
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""
