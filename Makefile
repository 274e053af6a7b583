# `make demo` and `make test` work on a machine with only Python, make and the package registries:
# scripts/bootstrap.sh installs uv if missing, finds an installed Python 3.12 (PATH or pyenv) and syncs uv.lock.
SHELL := /bin/bash
unexport PYTHONDONTWRITEBYTECODE  # keep .pyc files: imports of torch/lerobot otherwise recompile every process
export MUJOCO_GL ?= egl
UV = $(shell scripts/bootstrap.sh --print-uv)

.PHONY: demo test lint bootstrap bench

bootstrap:
	@scripts/bootstrap.sh

demo: bootstrap
	$(UV) run gaflow demo

test: bootstrap
	$(UV) run pytest

lint: bootstrap
	$(UV) run ruff check src tests benchmarks
	$(UV) run lint-imports

bench: bootstrap
	$(UV) run python benchmarks/guidance_latency.py
