"""`gaflow serve` latency and throughput: served (openpi websocket, LeRobot gRPC) vs in-process, 1/4/8 clients,
with and without batching requests of several clients into one policy call — all in one run.

    HF_HUB_OFFLINE=1 uv run python benchmarks/serving_latency.py --out benchmarks/results/serving_cpu2.json

Policies: ``compact:builtin`` (MetaWorld observations, 84² image) and the offline tiny SmolVLA
(:mod:`gaflow.testing.lerobot_tiny`, random weights, one 96×128 camera, chunk 10), each unguided and guided (a fixed
random ``EnsembleMLPCritic``, ``relative`` ρ = 0.3, ``clean_estimate``). Server and clients share this process (the
server in its own threads, as ``gaflow serve`` runs it), on loopback.

1. **Per-chunk latency** (batch 1, one client): ``runtime.infer(obs)`` in-process vs the same request through
   ``openpi_client.WebsocketClientPolicy.infer`` (and, for SmolVLA, LeRobot's ``SendObservations`` +
   ``GetActions`` stubs), timed round-robin so load drift hits every arm alike; p50/p99 of the wall time.
2. **Throughput**: 1, 4 and 8 clients (threads, each its own connection and session) send ``--requests`` guided
   observations each, back to back; chunks/s (median of ``--rounds`` interleaved rounds), chunks per CPU-second of
   this process, per-request p50/p99, with ``max_batch`` 1 (every chunk bit-identical to an in-process call) and 8
   (waiting requests of one config share a policy call).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from gaflow.critic import EnsembleMLPCritic
from gaflow.policies.registry import load_policy
from gaflow.runtime import GuidedRuntime
from gaflow.serving import GuidedPolicyServer, GuidedPolicyService, ServeConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")
GUIDED = {"relative": 0.3}


def percentiles(ms: list[float]) -> dict[str, float]:
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "n": len(ms)}


def compact_setup():
    policy = load_policy("compact:builtin")
    torch.manual_seed(1234)
    critic = EnsembleMLPCritic({"observation": policy.config.hidden_dim, "state": 4}, policy.spec.chunk_len,
                               policy.spec.action_dim, hidden=(256, 256), num_members=3).eval()

    def observation(i: int) -> dict:
        rng = np.random.default_rng(i)
        return {"observation.image": rng.integers(0, 256, (84, 84, 3), dtype=np.uint8),
                "observation.state": rng.normal(size=4).astype(np.float32),
                "observation.environment_state": rng.normal(size=39).astype(np.float32),
                "task": "insert the gripper into the hole"}

    return GuidedRuntime(policy, critic=critic), observation


def smolvla_setup(workdir: Path):
    from gaflow.testing.lerobot_tiny import OfflineModelConfig, save_offline_checkpoint

    path = save_offline_checkpoint(OfflineModelConfig(family="smolvla", seed=1), workdir / "tiny_smolvla")
    policy = load_policy(f"lerobot:{path}", device="cpu")
    torch.manual_seed(1234)
    critic = EnsembleMLPCritic({"task": 64, "observation": 64, "state": 6}, policy.spec.chunk_len,
                               policy.spec.action_dim, hidden=(256, 256), num_members=3).eval()

    def observation(i: int) -> dict:
        rng = np.random.default_rng(i)
        return {"observation.images.top": rng.integers(0, 256, (96, 128, 3), dtype=np.uint8),
                "observation.state": rng.normal(size=6).astype(np.float32), "task": "pick up the red cube"}

    return GuidedRuntime(policy, critic=critic), observation


# ------------------------------------------------------------------------------------------------ 1. latency
def grpc_round_trip(port: int, observation) -> tuple:
    """A LeRobot stub session: returns ``call(i)`` = SendObservations + GetActions of a robot-format observation."""
    import pickle

    import grpc
    from lerobot.async_inference.helpers import RemotePolicyConfig, TimedObservation
    from lerobot.transport import services_pb2, services_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = services_pb2_grpc.AsyncInferenceStub(channel)
    joints = [f"j{k}" for k in range(6)]
    features = {"observation.state": {"dtype": "float32", "shape": (6,), "names": joints},
                "observation.images.top": {"dtype": "image", "shape": (96, 128, 3), "names": ["h", "w", "c"]}}
    stub.Ready(services_pb2.Empty(), timeout=30)
    stub.SendPolicyInstructions(services_pb2.PolicySetup(data=pickle.dumps(
        RemotePolicyConfig("smolvla", "served", features, 10))), timeout=30)

    def call(i: int):
        obs = observation(i)
        raw = {**dict(zip(joints, obs["observation.state"].tolist(), strict=True)),
               "top": obs["observation.images.top"], "task": obs["task"]}
        data = pickle.dumps(TimedObservation(time.time(), i, raw, must_go=True))
        stub.SendObservations(iter([services_pb2.Observation(transfer_state=services_pb2.TRANSFER_END, data=data)]),
                              timeout=60)
        reply = stub.GetActions(services_pb2.Empty(), timeout=60)
        assert reply.data, "empty GetActions"
        return reply

    return call, channel


def latency(runtime, observation, reps: int, warmup: int, grpc: bool) -> dict:
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    out = {}
    service = GuidedPolicyService(runtime, {"guided": GUIDED}, "off")
    service.warm_up()
    config = ServeConfig(port=0, grpc_port=0 if grpc else None)
    with GuidedPolicyServer(service, config) as server:
        client = WebsocketClientPolicy(f"ws://127.0.0.1:{server.port}")
        rpc, channel = grpc_round_trip(server.grpc_port, observation) if grpc else (None, None)
        for name, cfg in (("unguided", None), ("guided", GUIDED)):
            local = runtime.with_guidance(cfg)
            local.start_episode(0)
            control = {"gaflow": {"config": "guided"} if cfg is not None else {"guidance": False}}
            arms = {"in-process": lambda i, local=local: local.infer(observation(i)),
                    "openpi websocket": lambda i, control=control: client.infer({**observation(i), **control})}
            if rpc is not None:  # the gRPC session runs the server's default config: time it unguided only
                if cfg is None:
                    arms["LeRobot gRPC"] = rpc
            times: dict[str, list[float]] = {k: [] for k in arms}
            server_ms: list[float] = []
            for i in range(warmup + reps):
                for arm, fn in arms.items():
                    t0 = time.perf_counter()
                    reply = fn(i)
                    dt = (time.perf_counter() - t0) * 1e3
                    if i >= warmup:
                        times[arm].append(dt)
                        if arm == "openpi websocket":
                            server_ms.append(reply["server_timing"]["infer_ms"])
            out[name] = {arm: percentiles(v) for arm, v in times.items()}
            out[name]["server infer_ms (websocket)"] = percentiles(server_ms)
        if channel is not None:
            channel.close()
    return out


# ------------------------------------------------------------------------------------------------ 2. throughput
def throughput(runtime, observation, clients: int, requests: int, max_batch: int) -> dict:
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    service = GuidedPolicyService(runtime, {"guided": GUIDED}, max_batch=max_batch, max_sessions=clients + 1)
    service.warm_up()
    with GuidedPolicyServer(service, ServeConfig(port=0)) as server:
        policies = [WebsocketClientPolicy(f"ws://127.0.0.1:{server.port}/?seed={c}") for c in range(clients)]
        barrier = threading.Barrier(clients + 1)
        per_request: list[list[float]] = [[] for _ in range(clients)]
        batch_sizes: list[list[int]] = [[] for _ in range(clients)]

        def drive(c: int) -> None:
            barrier.wait()
            for i in range(requests):
                t0 = time.perf_counter()
                reply = policies[c].infer(observation(1000 * c + i))
                per_request[c].append((time.perf_counter() - t0) * 1e3)
                batch_sizes[c].append(reply["server_timing"]["batch_size"])

        threads = [threading.Thread(target=drive, args=(c,), daemon=True) for c in range(clients)]
        for t in threads:
            t.start()
        barrier.wait()
        t0, c0 = time.perf_counter(), time.process_time()
        for t in threads:
            t.join(600)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"clients": clients, "max_batch": max_batch, "seconds": elapsed, "cpu_seconds": cpu,
            "latencies_ms": [x for v in per_request for x in v], "batch_sizes": [b for v in batch_sizes for b in v]}


def throughput_rounds(runtime, observation, clients_list, requests: int, rounds: int) -> list[dict]:
    """Every (clients, max_batch) cell ``rounds`` times, interleaved, so load drift on a shared machine hits all
    cells alike; chunks/s is the median over rounds, request latencies are pooled. Chunks per CPU-second (this
    process: server and clients) is the load-robust efficiency measure."""
    cells = [(c, b) for c in clients_list for b in (1, 8)]
    runs: dict[tuple, list[dict]] = {cell: [] for cell in cells}
    for r in range(rounds):
        for clients, max_batch in cells:
            print(f"  throughput round {r + 1}/{rounds}: {clients} client(s), max_batch {max_batch}", flush=True)
            runs[(clients, max_batch)].append(throughput(runtime, observation, clients, requests, max_batch))
    rows = []
    for (clients, max_batch), cell in runs.items():
        n = clients * requests
        lat = [x for run in cell for x in run["latencies_ms"]]
        rows.append({"clients": clients, "max_batch": max_batch, "requests_per_round": n, "rounds": len(cell),
                     "chunks_per_s": statistics.median(n / run["seconds"] for run in cell),
                     "chunks_per_s_rounds": [n / run["seconds"] for run in cell],
                     "chunks_per_cpu_s": statistics.median(n / run["cpu_seconds"] for run in cell),
                     **{f"request_{k}": v for k, v in percentiles(lat).items()},
                     "mean_batch": float(np.mean([b for run in cell for b in run["batch_sizes"]]))})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=40, help="timed chunks per latency arm")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--requests", type=int, nargs=2, default=[30, 10],
                    help="requests per client in the throughput runs: compact, SmolVLA")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--rounds", type=int, default=3, help="interleaved repetitions of every throughput cell")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    console = Console(width=130)
    results: dict = {"machine": {"cpus": os.cpu_count(), "torch_threads": args.threads, "python": platform.python_version(),
                                 "torch": torch.__version__, "load_at_start": os.getloadavg()},
                     "latency_ms": {}, "throughput": {}}
    with tempfile.TemporaryDirectory() as tmp:
        setups = {"compact:builtin": (compact_setup, args.requests[0], False),
                  "tiny SmolVLA": (lambda: smolvla_setup(Path(tmp)), args.requests[1], True)}
        for name, (setup, requests, grpc) in setups.items():
            runtime, observation = setup()
            console.print(f"[bold]{name}[/bold]: latency ({args.reps} chunks per arm)")
            results["latency_ms"][name] = latency(runtime, observation, args.reps, args.warmup, grpc)
            results["throughput"][name] = throughput_rounds(runtime, observation, args.clients, requests, args.rounds)
    results["machine"]["load_at_end"] = os.getloadavg()

    table = Table(title="per-chunk latency, batch 1, wall ms (p50 / p99)")
    for col in ("policy", "guidance", "arm", "p50", "p99"):
        table.add_column(col)
    for name, by_cfg in results["latency_ms"].items():
        for cfg, arms in by_cfg.items():
            for arm, p in arms.items():
                table.add_row(name, cfg, arm, f"{p['p50']:.1f}", f"{p['p99']:.1f}")
    console.print(table)
    table = Table(title="throughput, guided (ρ 0.3), openpi websocket")
    for col in ("policy", "clients", "max_batch", "chunks/s (median)", "rounds", "chunks/CPU-s", "request p50 ms",
                "request p99 ms", "mean batch"):
        table.add_column(col)
    for name, rows in results["throughput"].items():
        for r in rows:
            table.add_row(name, str(r["clients"]), str(r["max_batch"]), f"{r['chunks_per_s']:.1f}",
                          " ".join(f"{x:.0f}" for x in r["chunks_per_s_rounds"]), f"{r['chunks_per_cpu_s']:.1f}",
                          f"{r['request_p50']:.0f}", f"{r['request_p99']:.0f}", f"{r['mean_batch']:.2f}")
    console.print(table)
    console.print(f"load average: start {results['machine']['load_at_start']}, end {results['machine']['load_at_end']}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
