"""The local `tritonserver`: the binary shipped in the nvidia-pytriton wheel, its python
backend laid out beside it, and the environment its stub needs (see shared/GPU.md).

CPU sizing: Triton gets the machine's cores as `instances x threads` (`instance_plan`):
one model instance per THREADS_PER_INSTANCE cores (at least one), each running ONNX
Runtime (or torch) on its share of threads, so instances never oversubscribe the cores.
The count in config.pbtxt stays the portable default; the load request overrides it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import sysconfig
import urllib.request
from pathlib import Path

from tilesight.settings import LOOPBACK, PROJECT_ROOT, Settings

log = logging.getLogger(__name__)

#: Cores per CPU model instance: a small U-Net's convolutions split well over a few
#: threads, not over dozens, so a big box is better used as more instances (a rule, not
#: yet measured beyond this project's 2-core machine; docs/deployment.md).
THREADS_PER_INSTANCE = 4


def cpu_cores() -> int:
    """The cores this process may run on (a container's or taskset's share, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def instance_plan(cores: int | None = None) -> tuple[int, int]:
    """(model instances, threads per instance) for a CPU Triton on `cores` cores:
    2 cores -> 1 x 2, 6 -> 1 x 6, 10 -> 2 x 5, 16 -> 4 x 4."""
    cores = max(1, cores or cpu_cores())
    instances = max(1, cores // THREADS_PER_INSTANCE)
    return instances, cores // instances


def config_override(model_dir: Path, instances: int) -> str | None:
    """The model's config.pbtxt as Triton's load-request JSON with its CPU instance
    count set to `instances`; None when the file already says so (or has no CPU group,
    e.g. a GPU config), so the file is loaded as it is."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse(
        (Path(model_dir) / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    cpu = model_config_pb2.ModelInstanceGroup.KIND_CPU
    groups = [g for g in config.instance_group if g.kind == cpu]
    if not groups or [g.count for g in groups] == [instances]:
        return None
    del config.instance_group[:]
    config.instance_group.add(kind=cpu, count=instances)
    return json_format.MessageToJson(config, preserving_proto_field_name=True)


def load_config(model_dir: Path) -> str | None:
    """The load-request config for a model of this machine's Triton: its config.pbtxt
    with the CPU instance count of `instance_plan`. Every (re)load must carry it, or a
    reload (a promoted version) falls back to the file's count."""
    if not (Path(model_dir) / "config.pbtxt").is_file():
        return None
    return config_override(model_dir, instance_plan()[0])


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
        _, threads = instance_plan()
        return {
            "LD_LIBRARY_PATH": ":".join(p for p in paths if p),
            "TILESIGHT_SITE_PACKAGES": os.pathsep.join(site_paths),
            "TILESIGHT_MODEL_THREADS": str(threads),
            "OMP_NUM_THREADS": str(threads),
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
        fails to load must leave the server up (serving the others, answering 503 for it).
        Each load carries the instance count of `instance_plan`."""
        for name in self.models():
            url = f"http://{self.settings.triton_http_url}/v2/repository/models/{name}/load"
            config = load_config(self.settings.model_repo / name)
            body = json.dumps({"parameters": {"config": config}}).encode() if config else b""
            request = urllib.request.Request(url, data=body, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=300):
                    log.info("triton loaded %s", name)
            except OSError as exc:
                log.warning("triton could not load %s: %s", name, exc)
