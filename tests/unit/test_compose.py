"""docker-compose.yml, checked for structure since no Docker engine runs here."""

from __future__ import annotations

import yaml

from tilesight.settings import PROJECT_ROOT


def load() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())


def test_services_and_their_images() -> None:
    services = load()["services"]
    assert {"postgis", "redis", "triton", "api", "worker"} <= set(services)
    assert services["postgis"]["image"].startswith("postgis/postgis")
    assert services["redis"]["image"].startswith("redis")
    assert "tritonserver" in services["triton"]["image"]


def test_every_long_running_service_has_a_healthcheck() -> None:
    services = load()["services"]
    for name in ("postgis", "redis", "triton", "api", "worker"):
        assert services[name]["healthcheck"]["test"], name


def test_dependencies_wait_for_health() -> None:
    services = load()["services"]
    for name in ("api", "worker"):
        depends = services[name]["depends_on"]
        assert depends["redis"]["condition"] == "service_healthy"
        assert depends["triton"]["condition"] == "service_healthy"
        assert depends["migrate"]["condition"] == "service_completed_successfully"


def test_worker_reserves_a_gpu_and_scales() -> None:
    worker = load()["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] for d in devices)
    assert worker["deploy"]["replicas"] >= 1
    assert "-Q" in worker["command"] and "gpu,cpu" in worker["command"]


def test_triton_serves_the_repository_in_explicit_mode() -> None:
    triton = load()["services"]["triton"]
    assert "--model-control-mode=explicit" in triton["command"]
    assert any(v.endswith(":/models") for v in triton["volumes"])
