"""Shared fixtures: settings for a private stack on free ports, and the real stack itself.

The stack is started once per test session through the same `tilesight.stack` code that
`tilesight up` uses, in a temporary home, so tests never touch a developer's own stack.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tilesight.settings import PROJECT_ROOT, Settings
from tilesight.stack import Stack, bring_up, isolated_settings

TEST_OUTPUT = PROJECT_ROOT / "test-output"

# fixtures shared by the job, fault and browser tests (one undisturbed reference job)
pytest_plugins = ["tests.integration.jobs_support"]


@pytest.fixture(scope="session")
def test_home() -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(prefix="tilesight-test-"))
    yield home
    if not os.environ.get("TILESIGHT_KEEP_TEST_HOME"):
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def settings(test_home: Path) -> Settings:
    """Free ports, a temporary home, and a copy of model_repo/ so that tests which train,
    export or promote versions never touch the project's own repository."""
    model_repo = test_home / "model_repo"
    if (PROJECT_ROOT / "model_repo").is_dir():
        shutil.copytree(PROJECT_ROOT / "model_repo", model_repo, ignore=_no_checkpoints)
    return isolated_settings(
        test_home,
        model_repo=model_repo,
        load_demo=True,
        remote_allowlist=["127.0.0.1", "localhost"],
        # generous: tests from one address must not trip limits meant for the public;
        # test_access.py builds its own app with tight limits to test them
        rate_limits={
            "tiles": [5000, 20000],
            "predictions": [5000, 20000],
            "jobs": [100, 1000],
            "default": [5000, 20000],
        },
    )


def _no_checkpoints(folder: str, names: list[str]) -> list[str]:
    return [n for n in names if n in ("__pycache__",) or n.endswith(".ckpt")]


@pytest.fixture(scope="session")
def stack(settings: Settings) -> Iterator[Stack]:
    """The whole local stack (PostGIS, Redis, Triton, worker, API), with the demo data loaded."""
    stack = Stack(settings)
    try:
        bring_up(stack)
        yield stack
    finally:
        stack.stop()
        _keep_logs(settings)


def _keep_logs(settings: Settings) -> None:
    """Copy the stack's logs under test-output/ so a CI failure can be read afterwards."""
    target = TEST_OUTPUT / "stack-logs"
    target.mkdir(parents=True, exist_ok=True)
    for log in settings.run_dir.glob("*.log"):
        shutil.copy2(log, target / log.name)


@pytest.fixture(scope="session")
def api_url(stack: Stack) -> str:
    return stack.settings.api_url


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Browser tests last: Playwright's sync API leaves an event loop running in the main
    thread while a browser is open, which asyncio.run() in other tests refuses."""
    items.sort(key=lambda item: "/browser/" in str(item.fspath))
