"""The local stack: PostgreSQL+PostGIS, Redis, Triton, a Celery worker and the API.

`tilesight up` and the integration tests both start the stack through this module, so
what the tests exercise is what a user runs. Each component is a child process with a
pid file and a log under `<home>/run/`, started in dependency order and awaited until
it answers; `stop()` (Ctrl-C, `tilesight down`) ends them in reverse order.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tilesight.components import (
    Component,
    StackError,
    identity,
    settings_env,
    stack_components,
)
from tilesight.exposure import ExposureRefused, check_exposure
from tilesight.settings import LOOPBACK, PROJECT_ROOT, Settings

log = logging.getLogger(__name__)

__all__ = [
    "Component",
    "Stack",
    "StackError",
    "bring_up",
    "free_port",
    "isolated_settings",
    "port_in_use",
    "settings_env",
]


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


class Stack:
    """Starts, watches and stops the local components for one `Settings`."""

    def __init__(self, settings: Settings, components: list[str] | None = None) -> None:
        self.settings = settings
        self.run_dir = settings.run_dir
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        all_components = stack_components(settings, self._worker_name)
        wanted = components or [c.name for c in all_components]
        self.components = [c for c in all_components if c.name in wanted]

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
            **identity(component.run_as),
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
