"""Settings: derived URLs and the round trip to the environment that children inherit."""

from __future__ import annotations

from pathlib import Path

import pytest

from tilesight.settings import Settings
from tilesight.stack import Stack, StackError, free_port, settings_env


def test_urls_follow_ports() -> None:
    s = Settings(postgres_port=6000, redis_port=6001, triton_grpc_port=6002)
    assert s.database_url.endswith("@127.0.0.1:6000/tilesight")
    assert s.redis_url == "redis://127.0.0.1:6001/0"
    assert s.triton_url == "127.0.0.1:6002"


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TILESIGHT_API_PORT", "9999")
    monkeypatch.setenv("TILESIGHT_HOME", str(tmp_path))
    s = Settings()
    assert s.api_port == 9999
    assert s.run_dir == tmp_path / "run"


def test_children_see_the_same_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    original = Settings(home=tmp_path, api_port=1234, data_roots=[tmp_path / "a"])
    for key, value in settings_env(original).items():
        monkeypatch.setenv(key, value)
    assert Settings() == original


def test_busy_port_gets_a_clear_message(tmp_path: Path) -> None:
    import socket

    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        stack = Stack(Settings(home=tmp_path, redis_port=port), ["redis"])
        with pytest.raises(StackError, match=rf"redis port {port}.*TILESIGHT_REDIS_PORT"):
            stack.check_ports()
