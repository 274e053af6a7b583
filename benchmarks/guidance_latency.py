"""Per-chunk latency of the unguided sampler and of each guidance estimator / control, in one process and run.

    uv run python benchmarks/guidance_latency.py [--chunk-len 50 --action-dim 7 --padded-dim 32 --members 3 ...]

Prints, per arm, the median per-chunk latency, its ratio to unguided, and the guidance overhead
(arm − unguided) divided by the bare cost of the critics' forward+backward over the same number of steps
(measured here too: a plain batched ``critic(features, chunk)`` call and its gradient w.r.t. the chunk,
``num_steps`` times). The clean-estimate estimator should add about one critic forward+backward per step and no
extra velocity call: its overhead ratio ≈ 1 (guidance precomputes the features' share of the critic's first layer
once per chunk, so it can come out below 1).
Also compares the K-member ensemble evaluated in one batched call with K separate single-member calls.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from gaflow.critic import EnsembleMLPCritic
from gaflow.guidance import ESTIMATORS, CriticObjective, Guidance, GuidanceConfig
from gaflow.policies import CallablePolicy, PolicySpec
from gaflow.sampler import SamplerConfig, sample_chunks


def velocity_model(spec: PolicySpec, obs_dim: int, width: int, depth: int, device=None) -> CallablePolicy:
    """An MLP action expert: v(x_t, t | obs features) — a stand-in for a policy's velocity call."""
    flat = spec.chunk_len * spec.padded_dim
    layers: list[nn.Module] = [nn.Linear(flat + 1 + obs_dim, width), nn.SiLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.SiLU()]
    net = nn.Sequential(*layers, nn.Linear(width, flat)).requires_grad_(False).to(device)

    def fn(x, t, ctx):
        return net(torch.cat([x.flatten(1), t.view(-1, 1).to(x), ctx["obs"]], 1)).view_as(x)

    return CallablePolicy(fn, spec, features_fn=lambda ctx: {"observation": ctx["obs"]})


def timeit(fn, reps: int, warmup: int = 3) -> float:
    return time_interleaved({"fn": fn}, reps, warmup)["fn"]


def time_interleaved(fns: dict, reps: int, warmup: int = 3) -> dict[str, float]:
    """Median ms per call of each function, timed round-robin so drifting machine load hits all arms alike; the
    order is shuffled every round (seeded), so no arm always inherits the caches the previous one left warm."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    order, rng = list(fns), random.Random(0)
    for _ in range(reps):
        rng.shuffle(order)
        for name in order:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunk-len", type=int, default=50)
    ap.add_argument("--action-dim", type=int, default=7)
    ap.add_argument("--padded-dim", type=int, default=32)
    ap.add_argument("--obs-dim", type=int, default=512)
    ap.add_argument("--num-steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--velocity-width", type=int, default=1024)
    ap.add_argument("--velocity-depth", type=int, default=4)
    ap.add_argument("--critic-hidden", type=int, nargs="+", default=[512, 512])
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", type=str, default="cpu", help="cpu or cuda")
    ap.add_argument("--json", type=str, default=None, help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    spec = PolicySpec(args.chunk_len, args.action_dim, args.padded_dim, "lerobot", args.num_steps)
    policy = velocity_model(spec, args.obs_dim, args.velocity_width, args.velocity_depth, torch.device(args.device))
    dev = torch.device(args.device)
    critic = EnsembleMLPCritic({"observation": args.obs_dim}, args.chunk_len, args.action_dim,
                               hidden=args.critic_hidden, num_members=args.members).to(dev)
    n_params = sum(p.numel() for p in critic.parameters()) // args.members
    ctx = {"obs": torch.randn(args.batch, args.obs_dim, device=dev)}
    noise = torch.randn(args.batch, args.chunk_len, args.padded_dim, device=dev)
    noise4 = torch.randn(args.batch, 4, args.chunk_len, args.padded_dim, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def run(cfg: GuidanceConfig | None, sampler: SamplerConfig | None = None):
        g = Guidance(critic, cfg) if cfg is not None else None
        n = noise if sampler is None or sampler.num_candidates == 1 else noise4

        def call():
            sample_chunks(policy, context=ctx, noise=n, guidance=g, config=sampler)
            sync()

        return call

    # bare critic cost: forward+backward of the K-member ensemble, num_steps times
    obj = CriticObjective(critic, {"observation": ctx["obs"]})
    chunk = noise[..., : args.action_dim].clone()
    singles = [EnsembleMLPCritic({"observation": args.obs_dim}, args.chunk_len, args.action_dim,
                                 hidden=args.critic_hidden, num_members=1).to(dev) for _ in range(args.members)]

    def separate():
        for _ in range(args.num_steps):
            c = chunk.detach().requires_grad_(True)
            q = sum(m({"observation": ctx["obs"]}, c).mean(0) for m in singles) / args.members
            torch.autograd.grad(q.sum(), c)


    arms: list[tuple[str, GuidanceConfig | None, SamplerConfig | None]] = [("unguided", None, None)]
    arms += [(e, GuidanceConfig(estimator=e, scale=0.1), None) for e in ESTIMATORS]
    arms += [("clean_estimate + gate", GuidanceConfig(scale=0.1, gate_k=20.0), None),
             ("control: zero", GuidanceConfig(scale=0.1, control="zero"), None),
             ("control: random", GuidanceConfig(scale=0.1, control="random"), None),
             ("post-hoc ascent (L=3)", GuidanceConfig(estimator="none", posthoc_steps=3), None),
             ("best-of-4", GuidanceConfig(estimator="none"), SamplerConfig(num_candidates=4, select="best")),
             ("guided + best-of-4", GuidanceConfig(scale=0.1), SamplerConfig(num_candidates=4, select="best"))]
    fns = {name: run(cfg, sampler) for name, cfg, sampler in arms}
    feats = {"observation": ctx["obs"]}

    def plain_critic():
        # the critics' bare forward+backward: one batched call on (features, chunk), gradient w.r.t. the chunk
        for _ in range(args.num_steps):
            c = chunk.detach().requires_grad_(True)
            torch.autograd.grad(critic(feats, c).mean(0).sum(), c)
        sync()

    fns["_critic"] = plain_critic
    fns["_critic_prepared"] = lambda: ([obj.value_and_grad(chunk) for _ in range(args.num_steps)], sync())
    fns["_separate"] = lambda: (separate(), sync())
    t_one = torch.ones(args.batch, device=dev)
    fns["_velocity"] = lambda: ([policy.velocity(ctx, noise, t_one) for _ in range(args.num_steps)], sync())
    results = time_interleaved(fns, args.reps)
    critic_ms, separate_ms, velocity_ms = results.pop("_critic"), results.pop("_separate"), results.pop("_velocity")
    prepared_ms = results.pop("_critic_prepared")
    base = results["unguided"]

    console = Console()
    table = Table(title=(f"per-chunk latency, {args.num_steps} steps, batch {args.batch}, H={args.chunk_len}, "
                         f"d={args.action_dim}/{args.padded_dim}, {args.members} critics × {n_params / 1e6:.2f}M params, "
                         f"{args.threads} threads, {args.device}"))
    for col in ("arm", "ms / chunk", "× unguided", "overhead / critic fwd+bwd"):
        table.add_column(col, justify="right" if col != "arm" else "left")
    for name, ms in results.items():
        table.add_row(name, f"{ms:.2f}", f"{ms / base:.3f}", "—" if name == "unguided" else f"{(ms - base) / critic_ms:.2f}")
    console.print(table)
    console.print(f"bare critic forward+backward × {args.num_steps}: {critic_ms:.2f} ms (one batched call of "
                  f"{args.members} members); {args.members} separate calls: {separate_ms:.2f} ms "
                  f"({separate_ms / critic_ms:.2f}×); the same with the features' first-layer part computed once "
                  f"per chunk (what guidance does): {prepared_ms:.2f} ms; velocity × {args.num_steps}: {velocity_ms:.2f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "ms": results, "critic_fwd_bwd_ms": critic_ms,
                       "critic_prepared_fwd_bwd_ms": prepared_ms,
                       "critic_separate_ms": separate_ms, "velocity_ms": velocity_ms}, f, indent=2)


if __name__ == "__main__":
    main()
