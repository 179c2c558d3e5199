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


def test_an_open_api_beyond_loopback_refuses_to_start(tmp_path: Path) -> None:
    from tilesight.exposure import ExposureRefused, check_exposure

    open_network = Settings(home=tmp_path, host="0.0.0.0")
    with pytest.raises(ExposureRefused, match="TILESIGHT_AUTH_REQUIRED"):
        check_exposure(open_network)
    with pytest.raises(StackError, match="TILESIGHT_ALLOW_OPEN_ACCESS"):
        Stack(open_network, ["api"]).start()
    check_exposure(open_network.model_copy(update={"auth_required": True}))
    check_exposure(open_network.model_copy(update={"allow_open_access": True}))
    check_exposure(Settings(home=tmp_path, host="::1"))


def test_services_listen_on_loopback_whatever_the_api_host(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, host="192.0.2.10", auth_required=True)
    assert "127.0.0.1" in settings.redis_url and "127.0.0.1" in settings.database_url
    stack = Stack(settings)
    commands = {c.name: c.command() for c in stack.components}
    for name in ("postgres", "redis", "triton"):
        assert not any("192.0.2.10" in part for part in commands[name]), name
    assert "listen_addresses=127.0.0.1" in commands["postgres"]
    redis_cmd = commands["redis"]
    assert redis_cmd[redis_cmd.index("--bind") + 1] == "127.0.0.1"
    assert redis_cmd[redis_cmd.index("--protected-mode") + 1] == "yes"
    assert "--http-address=127.0.0.1" in commands["triton"]
    assert "--grpc-address=127.0.0.1" in commands["triton"]
    api = commands["api"]
    assert api[api.index("--host") + 1] == "192.0.2.10"
    assert "--no-server-header" in api and "--no-proxy-headers" in api


def test_allowed_hosts_default_to_loopback_and_the_bound_host() -> None:
    from tilesight.exposure import allowed_hosts, host_name

    assert allowed_hosts(Settings(host="127.0.0.1")) == ["localhost", "127.0.0.1", "::1"]
    assert "tiles.example.org" in allowed_hosts(Settings(host="tiles.example.org"))
    assert allowed_hosts(Settings(allowed_hosts=["Maps.Example"])) == ["maps.example"]
    assert "testserver" in allowed_hosts(Settings(environment="test"))
    assert host_name("[::1]:8080") == "::1"
    assert host_name("LOCALHOST:8080") == "localhost"
    assert host_name("attacker.example") == "attacker.example"
