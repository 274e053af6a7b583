"""``gaflow serve`` — a frozen policy, optionally guided, behind an openpi websocket and LeRobot's gRPC service.

load the policy (and critic) once → build the named guidance configs → warm up → serve until SIGTERM.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import typer
from rich.console import Console

from gaflow.cli import app


def _named_config(item: str) -> tuple[str, dict, str | None]:
    """``NAME=FILE`` (a guidance config JSON or a ``locked.json``) or ``NAME={...}`` → (name, config, lock's critic)."""
    name, sep, value = item.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise typer.BadParameter(f"--config {item!r}: use NAME=<guidance JSON file | locked.json | inline JSON>")
    name, value = name.strip(), value.strip()
    if value.startswith("{"):
        try:
            return name, json.loads(value), None
        except json.JSONDecodeError as e:
            raise typer.BadParameter(f"--config {name}: inline JSON does not parse: {e}") from None
    path = Path(value)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise typer.BadParameter(f"--config {name}: cannot read {path}: {e}") from None
    if isinstance(data, dict) and "guidance" in data and "hash" in data:  # a lock file from `gaflow sweep`
        from gaflow.evaluation.sweep import load_locked, lock_critic

        try:
            locked = load_locked(path)  # refuses an edited, hand-written or copied-away lock
        except ValueError as e:
            raise typer.BadParameter(f"--config {name}: {e}") from None
        if locked["guidance"] is None:
            raise typer.BadParameter(f"--config {name}: {path} locked *unguided* (no config's validation lift was "
                                     "significant): serve the policy without guidance (request config 'off')")
        return name, locked["guidance"], lock_critic(locked, path)
    if not isinstance(data, dict):
        raise typer.BadParameter(f"--config {name}: {path} must hold a JSON object (a guidance config)")
    return name, data, None


@app.command()
def serve(
    policy: str = typer.Option(..., help="base policy spec: compact:builtin, compact:<dir>, lerobot:<dir or hub id>, "
                               "toy:default"),
    critic: Path = typer.Option(None, help="critic folder (needed by guided configs; default: a lock file's critic)"),
    config: list[str] = typer.Option([], help="a named guidance config a request may pick: NAME=<guidance JSON | "
                                     "locked.json from `gaflow sweep` | inline JSON>; repeat for several. 'off' (the "
                                     "unguided policy) always exists"),
    default_config: str = typer.Option(None, help="config of requests that name none (default: the first --config, "
                                       "else off)"),
    host: str = typer.Option("127.0.0.1", help="websocket bind address (loopback unless the robot is elsewhere)"),
    port: int = typer.Option(8000, help="openpi websocket port (0: any free port)"),
    grpc_port: int = typer.Option(None, help="also serve LeRobot's AsyncInference gRPC here (LeRobot policies)"),
    grpc_host: str = typer.Option("127.0.0.1", help="gRPC bind address (LeRobot's protocol has no authentication)"),
    api_key: str = typer.Option(None, envvar="GAFLOW_SERVE_API_KEY",
                                help="require 'Authorization: Api-Key <key>' on websocket connections (prefer the "
                                "environment variable: a flag shows in `ps`)"),
    noise_seed: int = typer.Option(0, help="seed of the per-episode noise streams (as in `gaflow eval`)"),
    default_seed: int = typer.Option(0, help="episode of a session that asks for none (ws://host:port/?seed=N)"),
    num_steps: int = typer.Option(None, help="flow steps (default: the policy's)"),
    n_action_steps: int = typer.Option(None, help="actions a client should execute per chunk (in the metadata)"),
    mode: str = typer.Option("explicit", help="explicit (gaflow's sampler) | hook (LeRobot's own sampler, guided)"),
    max_batch: int = typer.Option(1, help="stack up to this many waiting requests of one config into one policy "
                                  "call (1 = off: every chunk bit-identical to an in-process call)"),
    max_sessions: int = typer.Option(64, help="concurrent client sessions"),
    max_message_mb: float = typer.Option(16.0, help="largest observation message accepted (MiB)"),
    num_threads: int = typer.Option(None, help="torch CPU threads (default: torch's)"),
    warm_up: bool = typer.Option(True, help="run every config once before accepting clients"),
) -> None:
    """Serve a guided policy to robots: openpi-client over a websocket, LeRobot's robot client over gRPC."""
    import torch

    from gaflow.policies.registry import load_policy
    from gaflow.runtime import GuidedRuntime
    from gaflow.sampler import SamplerConfig
    from gaflow.serving import GuidedPolicyServer, GuidedPolicyService, ServeConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    named, lock_critics = {}, []
    for item in config:
        name, cfg, lock_critic = _named_config(item)
        if name in named:
            raise typer.BadParameter(f"--config {name} is given twice")
        named[name] = cfg
        if lock_critic:
            lock_critics.append(lock_critic)
    if critic is None and lock_critics:
        critic = Path(lock_critics[0])
    try:
        cfg = ServeConfig(host=host, port=port, grpc_port=grpc_port, grpc_host=grpc_host, api_key=api_key,
                          max_message_bytes=int(max_message_mb * 2**20))
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    console = Console(stderr=True)
    console.print(f"loading {policy}" + (f" and critic {critic}" if critic else ""))
    base = load_policy(policy)
    loaded_critic = None
    if critic is not None:
        from gaflow.critic.train import load_critic

        loaded_critic = load_critic(critic)
    try:
        runtime = GuidedRuntime(base, critic=loaded_critic, sampler=SamplerConfig(num_steps=num_steps),
                                noise_seed=noise_seed, n_action_steps=n_action_steps, mode=mode)
        service = GuidedPolicyService(runtime, named, default_config, name=policy, default_seed=default_seed,
                                      max_batch=max_batch, max_sessions=max_sessions)
        server = GuidedPolicyServer(service, cfg)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    if warm_up:
        console.print(f"warming up ({len(service.configs)} config(s): {', '.join(service.configs)})")
        service.warm_up()

    def ready(srv: GuidedPolicyServer) -> None:
        console.print(f"serving {policy} (default config: {service.default_config}) on "
                      f"ws://{cfg.host}:{srv.port} (openpi)"
                      + (f" and {cfg.grpc_host}:{srv.grpc_port} (LeRobot gRPC)" if srv.grpc_port else "")
                      + f"; health: http://{cfg.host}:{srv.port}/healthz; pid {os.getpid()}", highlight=False,
                      soft_wrap=True)

    server.serve_forever(on_ready=ready)
