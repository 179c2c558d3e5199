"""Configuration, read once from `TILESIGHT_*` environment variables and a `.env` file.

Everything that differs between a laptop, CI and a cluster (ports, paths, URLs, limits)
lives here, so no other module reads `os.environ`. Tests build their own `Settings`
with free ports and a temporary home, which is why nothing below is a module-level
singleton except the cached default used by the CLI.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"


class Settings(BaseSettings):
    """All settings of one Tilesight deployment."""

    model_config = SettingsConfigDict(
        env_prefix="TILESIGHT_", env_file=".env", extra="ignore", validate_default=True
    )

    environment: str = Field("development", description="development, test or production")
    home: Path = Field(PROJECT_ROOT / ".tilesight", description="state: databases, logs, COGs")
    host: str = Field(
        "127.0.0.1",
        description="where the API listens; the local stack's PostgreSQL, Redis and Triton "
        "always listen on loopback only (see tilesight/exposure.py)",
    )

    # ports of the local stack
    api_port: int = 8080
    postgres_port: int = 5433
    redis_port: int = 6380
    triton_http_port: int = 8000
    triton_grpc_port: int = 8001
    triton_metrics_port: int = 8002

    # where services live; empty means "the local stack on the ports above"
    database_url: str = ""
    redis_url: str = ""
    triton_url: str = Field("", description="host:port of Triton's gRPC endpoint")
    triton_http_url: str = ""
    celery_broker_url: str = ""

    model_repo: Path = PROJECT_ROOT / "model_repo"
    default_model: str = "buildings"
    demo_data: Path = PROJECT_ROOT / "data" / "demo"
    data_roots: list[Path] = Field(
        default_factory=list,
        description="directories local source paths may come from (symlinks resolved)",
    )
    remote_allowlist: list[str] = Field(
        default_factory=list, description="hosts allowed for remote reads despite being private"
    )
    load_demo: bool = True
    web_dir: Path = PROJECT_ROOT / "web"

    # timeouts and limits
    triton_timeout_s: float = 10.0
    request_timeout_s: float = 30.0
    tile_cache_ttl_s: int = 24 * 3600
    prediction_cache: bool = Field(True, description="keep prediction probabilities in Redis")
    prediction_context_px: int = Field(64, description="imagery read around a tile to predict it")
    prediction_block: int = Field(
        2,
        description="native tiles per side the model predicts in one window (1, 2, 4 or 8): "
        "the context is read and inferred once per block, not once per tile",
    )
    upload_max_bytes: int = 512 * 1024 * 1024
    source_max_pixels: int = Field(
        2**29,
        description="the most pixels a registration may convert or mosaic (a chip zip's "
        "extent, a GeoTIFF's width x height), checked from names and headers first",
    )
    job_max_area_km2: float = 50.0
    job_max_tiles: int = 20_000
    job_max_vertices: int = 10_000
    job_chunk_tiles: int = 16
    celery_visibility_timeout_s: int = 3600
    max_body_bytes: int = Field(2 * 1024 * 1024, description="JSON bodies; uploads have their own")

    # access control and fairness
    auth_required: bool = Field(False, description="every request needs an API key")
    public_tiles: bool = Field(True, description="imagery and prediction tiles need no key")
    rate_limits: dict[str, list[float]] = Field(
        default_factory=lambda: {
            "tiles": [200.0, 800.0],
            "predictions": [60.0, 240.0],
            "jobs": [1.0, 20.0],
            "default": [50.0, 200.0],
        },
        description="budget -> [tokens per second, burst], per API key or client address",
    )
    max_active_jobs_per_key: int = 4
    allow_open_access: bool = Field(
        False,
        description="serve callers beyond loopback with auth_required off (every caller is "
        "then admin); without it the API refuses to start so",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host header values the API answers (DNS rebinding); empty: loopback "
        "names and `host`; ['*'] turns the check off",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="addresses or networks whose X-Forwarded-For names the real client; "
        "empty: trust none, so rate limits key on the connecting address",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="origins (https://maps.example.org) whose pages may also call the "
        "routes that change state; any origin may read tiles, TileJSON and exports; "
        "comma-separated in TILESIGHT_CORS_ORIGINS, '*' for all",
    )
    max_queued_chunks: int = 5000

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        """A comma-separated list from the environment, or a JSON list."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("prediction_block")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        """A block is the tile some zooms up, so its side must be a power of two."""
        if value not in (1, 2, 4, 8):
            raise ValueError("prediction_block must be 1, 2, 4 or 8")
        return value

    @model_validator(mode="after")
    def _derive_urls(self) -> Settings:
        """Fill service URLs from the local-stack ports unless given explicitly."""
        local = LOOPBACK  # the local stack's services never listen beyond loopback
        if not self.database_url:
            self.database_url = (
                f"postgresql+psycopg://tilesight@{local}:{self.postgres_port}/tilesight"
            )
        if not self.redis_url:
            self.redis_url = f"redis://{local}:{self.redis_port}/0"
        if not self.celery_broker_url:
            self.celery_broker_url = self.redis_url
        if not self.triton_url:
            self.triton_url = f"{local}:{self.triton_grpc_port}"
        if not self.triton_http_url:
            self.triton_http_url = f"{local}:{self.triton_http_port}"
        if not self.data_roots:
            self.data_roots = [self.home / "data", self.demo_data]
        return self

    @property
    def sources_dir(self) -> Path:
        """Where registered imagery (COGs made on registration, uploads) is kept."""
        return self.home / "data" / "sources"

    @property
    def staging_dir(self) -> Path:
        """Uploads being received: outside sources_dir (no source id can name it) and
        outside every data root (no path registration can reach a half-written file)."""
        return self.home / "staging"

    @property
    def run_dir(self) -> Path:
        """Pid files and logs of the local stack."""
        return self.home / "run"

    @property
    def api_url(self) -> str:
        """Where this machine reaches the API (loopback when it listens everywhere)."""
        host = LOOPBACK if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.api_port}"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
