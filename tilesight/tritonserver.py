"""The local `tritonserver`: the binary shipped in the nvidia-pytriton wheel, its python
backend laid out beside it, and the environment its stub needs (see shared/GPU.md)."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import sysconfig
import urllib.request
from pathlib import Path

from tilesight.settings import LOOPBACK, PROJECT_ROOT, Settings

log = logging.getLogger(__name__)


class TritonLayout:
    """Where the `tritonserver` binary from the nvidia-pytriton wheel lives, and how to run it.

    The python backend's stub embeds the interpreter and must find *this* interpreter's
    libpython (see shared/GPU.md), and it ignores PYTHONPATH for sys.path, so model.py
    adds the directories named in TILESIGHT_SITE_PACKAGES itself.
    """

    def __init__(self, settings: Settings) -> None:
        import pytriton

        self.settings = settings
        self.server_dir = Path(pytriton.__file__).parent / "tritonserver"
        self.libs_dir = Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs"
        self.backend_dir = settings.home / "triton-backends"

    def prepare(self) -> None:
        self.settings.model_repo.mkdir(parents=True, exist_ok=True)
        python_dir = self.backend_dir / "python"
        if not (python_dir / "triton_python_backend_stub").exists():
            python_dir.mkdir(parents=True, exist_ok=True)
            shutil.copytree(self.server_dir / "backends" / "python", python_dir, dirs_exist_ok=True)
            version = f"{sys.version_info.major}.{sys.version_info.minor}"
            shutil.copy2(
                self.server_dir / "python_backend_stubs" / version / "triton_python_backend_stub",
                python_dir,
            )

    def env(self) -> dict[str, str]:
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        paths = [libdir, str(self.libs_dir), os.environ.get("LD_LIBRARY_PATH", "")]
        site_paths = [p for p in sys.path if p.endswith("site-packages")] + [str(PROJECT_ROOT)]
        return {
            "LD_LIBRARY_PATH": ":".join(p for p in paths if p),
            "TILESIGHT_SITE_PACKAGES": os.pathsep.join(site_paths),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
        }

    def models(self) -> list[str]:
        repo = self.settings.model_repo
        return sorted(p.parent.name for p in repo.glob("*/config.pbtxt"))

    def command(self) -> list[str]:
        s = self.settings
        cmd = [
            str(self.server_dir / "bin" / "tritonserver"),
            f"--model-repository={s.model_repo}",
            f"--backend-directory={self.backend_dir}",
            f"--http-port={s.triton_http_port}",
            f"--grpc-port={s.triton_grpc_port}",
            f"--metrics-port={s.triton_metrics_port}",
            # no auth in Triton: loopback only, whatever TILESIGHT_HOST (the API's) says;
            # metrics follow --http-address
            f"--http-address={LOOPBACK}",
            f"--grpc-address={LOOPBACK}",
            "--model-control-mode=explicit",
            "--strict-readiness=false",
            "--exit-timeout-secs=2",
            "--log-verbose=0",
        ]
        return cmd

    def load_models(self) -> None:
        """Ask Triton to load each model after start, not with --load-model: a model that
        fails to load must leave the server up (serving the others, answering 503 for it)."""
        for name in self.models():
            url = f"http://{self.settings.triton_http_url}/v2/repository/models/{name}/load"
            request = urllib.request.Request(url, data=b"", method="POST")
            try:
                with urllib.request.urlopen(request, timeout=300):  # noqa: S310
                    log.info("triton loaded %s", name)
            except OSError as exc:
                log.warning("triton could not load %s: %s", name, exc)
