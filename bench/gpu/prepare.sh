#!/usr/bin/env bash
# Download, here, the wheels the GPU machine lacks (it has no network), into .gpu/wheels,
# an ignored folder that the device call carries. See ../shared/GPU.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .gpu/wheels
.venv/bin/pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux_2_35_x86_64 --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d .gpu/wheels \
  nvidia-pytriton tritonclient python-rapidjson pydantic-settings python-dotenv \
  pydantic pydantic-core typing-inspection annotated-types grpcio protobuf
du -sh .gpu/wheels
