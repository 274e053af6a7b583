"""Per-chunk latency of a LeRobot SmolVLA (random weights, built offline), unguided vs guided, explicit loop vs hook.

    HF_HUB_OFFLINE=1 uv run python benchmarks/lerobot_latency.py --size full --device cpu --reps 3
    bash benchmarks/lerobot_latency_gpu.sh            # the same on CUDA

Arms (batch 1, the policy's own 10 flow steps, every arm timed round-robin in one process):

* ``explicit unguided`` — ``sample_chunks(adapter, obs, noise=…)``: preprocess + prefix once + 10 velocities;
* ``explicit guided`` — the same with a realistic critic: ``EnsembleMLPCritic`` K=3 (≈0.65M parameters each) on
  the policy's ``task`` + ``observation`` + ``state`` features, ``clean_estimate`` estimator (one critic
  forward+backward per step, no extra velocity), GAF's β=3, clip 1, gate k=20;
* ``lerobot predict_action_chunk`` — LeRobot's own sampler (preprocess + ``predict_action_chunk``);
* ``hook guided`` — the same LeRobot call with :class:`LeRobotGuidanceHook` attached (same critic and config).

Because two ~10 s chunk timings differ by far more noise than the guidance costs on a shared CPU, the guidance's
own cost is also measured directly: the same sampler and guidance on a policy that replays one precomputed SmolVLA
velocity; ``1 + (guided − unguided of that pair) / unguided chunk`` is the robust guided/unguided ratio.

Each arm is timed on the wall clock and on this process's CPU time (on a shared CPU machine other processes
inflate wall time but not our CPU time; on CUDA only wall time means anything). Target: guided ≤ 1.05× unguided. Components (prefix, 10 velocities, 10 critic forward+backward) are timed too, to
explain the ratios. Full size is SmolVLA's real architecture (SmolVLM2-500M, 16 VLM layers, ≈450M parameters,
50-step chunks, 512² images); ``--size tiny`` runs in seconds for a smoke test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from gaflow.critic import EnsembleMLPCritic
from gaflow.guidance import CriticObjective, Guidance, GuidanceConfig
from gaflow.policies import CallablePolicy
from gaflow.policies.lerobot import wrap_lerobot_policy
from gaflow.runtime import LeRobotGuidanceHook
from gaflow.sampler import sample_chunks
from gaflow.testing.lerobot_tiny import OfflineModelConfig, build_offline_policy, example_observation

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def time_arms(fns: dict, reps: int, warmup: int) -> dict[str, dict[str, float]]:
    """Median ms per call of each function, round-robin (as benchmarks/guidance_latency.py), on two clocks:
    ``wall`` and this process's ``cpu`` time. On a shared CPU machine other processes inflate wall time (and its
    noise) but not our CPU time, so CPU-time ratios are the robust overhead measure there; on CUDA use wall."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
    med = lambda d: {k: statistics.median(v) * 1e3 for k, v in d.items()}  # noqa: E731
    return {"wall": med(wall), "cpu": med(cpu)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--size", choices=["tiny", "full"], default="full")
    ap.add_argument("--reps", type=int, default=3, help="timed chunks per arm (after --warmup)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--cameras", type=int, default=2)
    ap.add_argument("--action-dim", type=int, default=7)
    ap.add_argument("--state-dim", type=int, default=8)
    ap.add_argument("--critic-hidden", type=int, nargs="+", default=[256, 256])
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--json", type=str, default=None, help="also write the results here (atomically)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")
    console = Console()

    t0 = time.perf_counter()
    cams = tuple(f"observation.images.cam{i}" for i in range(args.cameras))
    cfg = OfflineModelConfig(family="smolvla", size=args.size, action_dim=args.action_dim, state_dim=args.state_dim,
                             cameras=cams, image_shape=(3, 256, 256), extra={"device": args.device})
    workdir = tempfile.TemporaryDirectory(prefix="gaflow_lerobot_bench_")
    policy, pre, post = build_offline_policy(cfg, workdir.name)
    policy.to(args.device)
    adapter = wrap_lerobot_policy(policy, pre, post)
    build_s = time.perf_counter() - t0
    n_policy = sum(p.numel() for p in policy.parameters())
    spec = adapter.spec

    obs = example_observation(policy.config, 1, seed=0)
    noise = torch.randn(1, spec.chunk_len, spec.padded_dim, generator=torch.Generator().manual_seed(0))
    noise = noise.to(args.device)
    feats = adapter.encode(obs).features
    keys = ("task", "observation", "state")
    critic = EnsembleMLPCritic({k: feats[k].shape[-1] for k in keys}, spec.chunk_len, spec.action_dim,
                               hidden=args.critic_hidden, num_members=args.members).to(args.device)
    n_critic = sum(p.numel() for p in critic.parameters()) // args.members
    gcfg = GuidanceConfig(estimator="clean_estimate", scale=1 / 3, clip=1.0, gate_k=20.0, gate_min=0.1)
    guidance = Guidance(critic, gcfg)
    hook = LeRobotGuidanceHook(adapter, guidance)

    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)

    def timed(fn):
        def run():
            with torch.inference_mode():  # as a policy server would call it
                fn()
            sync()
        return run

    def hooked():
        with hook:
            adapter.lerobot_chunk(obs, noise=noise.clone())

    objective = CriticObjective(critic, dict(feats))
    chunk = noise[..., : spec.action_dim].clone()
    fns = {
        "explicit unguided": lambda: sample_chunks(adapter, obs, noise=noise),
        "explicit guided": lambda: sample_chunks(adapter, obs, noise=noise, guidance=guidance),
        "lerobot predict_action_chunk": lambda: adapter.lerobot_chunk(obs, noise=noise.clone()),
        "hook guided": hooked,
        "_prefix (preprocess + encode)": lambda: adapter.encode(obs),
    }
    # The guidance's own cost, free of the VLA's timing noise: the same sampler and guidance on a policy that
    # replays one precomputed SmolVLA velocity (guided − unguided of these two arms = guidance overhead per chunk).
    v_fixed = adapter.velocity(adapter.encode(obs), noise, torch.ones(1, device=args.device))
    replay = CallablePolicy(lambda x, t, c: v_fixed, spec, features_fn=lambda c: feats)
    fns["_replayed velocity, unguided"] = lambda: sample_chunks(replay, context={}, noise=noise)
    fns["_replayed velocity, guided"] = lambda: sample_chunks(replay, context={}, noise=noise, guidance=guidance)
    fns = {k: timed(f) for k, f in fns.items()}
    # the critic needs autograd; time it outside inference mode
    fns["_critic fwd+bwd × steps"] = lambda: ([objective.value_and_grad(chunk) for _ in range(spec.num_steps)], sync())
    console.print(f"built {args.size} SmolVLA ({n_policy / 1e6:.0f}M params) in {build_s:.1f}s on {args.device}; "
                  f"timing {len(fns)} arms × ({args.warmup} warmup + {args.reps} reps) ...")
    timings = time_arms(fns, args.reps, args.warmup)

    def ratios(ms: dict[str, float]) -> dict[str, float]:
        overhead = ms["_replayed velocity, guided"] - ms["_replayed velocity, unguided"]
        return {
            "(explicit unguided + guidance overhead) / explicit unguided": 1 + overhead / ms["explicit unguided"],
            "explicit guided / explicit unguided": ms["explicit guided"] / ms["explicit unguided"],
            "hook guided / lerobot predict_action_chunk": ms["hook guided"] / ms["lerobot predict_action_chunk"],
            "hook guided / explicit guided": ms["hook guided"] / ms["explicit guided"],
            "lerobot predict_action_chunk / explicit unguided":
                ms["lerobot predict_action_chunk"] / ms["explicit unguided"],
        }

    clocks = ("wall",) if args.device == "cuda" else ("wall", "cpu")
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    table = Table(title=(f"SmolVLA {args.size} ({n_policy / 1e6:.0f}M) per-chunk latency, batch 1, "
                         f"H={spec.chunk_len}, {spec.num_steps} steps, {args.cameras} cameras, {device}; critic "
                         f"{args.members}×{n_critic / 1e6:.2f}M params, median of {args.reps}"))
    table.add_column("arm")
    for clock in clocks:
        table.add_column(f"ms / chunk ({clock})", justify="right")
    for name in timings["wall"]:
        table.add_row(name.lstrip("_"), *(f"{timings[c][name]:.1f}" for c in clocks))
    console.print(table)
    all_ratios = {c: ratios(timings[c]) for c in clocks}
    for name in all_ratios["wall"]:
        console.print(f"{name}: " + ", ".join(f"[bold]{all_ratios[c][name]:.3f}×[/bold] ({c})" for c in clocks))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(json.dumps({
            "args": vars(args), "device": device, "policy_params": n_policy, "critic_params_per_member": n_critic,
            "chunk_len": spec.chunk_len, "num_steps": spec.num_steps, "ms": {c: timings[c] for c in clocks},
            "ratios": all_ratios, "guidance": gcfg.to_dict(), "torch": torch.__version__,
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        }, indent=2))
        os.replace(tmp, out)
    workdir.cleanup()


if __name__ == "__main__":
    main()
