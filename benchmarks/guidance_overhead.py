"""What guidance adds per chunk on real policy paths, against the bare forward+backward of its critics (issue #18).

    HF_HUB_OFFLINE=1 uv run python benchmarks/guidance_overhead.py --threads 1 2 --rounds 40

One process, every arm of a thread setting timed round-robin (``--rounds`` rounds, medians), on three paths:

* ``smolvla explicit`` — a tiny SmolVLA built offline (``gaflow.testing.lerobot_tiny``; H = 50, 7 real action dims
  padded to 32, 10 flow steps, batch 1) sampled by gaflow's loop, ``sample_chunks(adapter, context=…)`` on a
  context encoded once (encoding costs the same with and without guidance);
* ``smolvla hook`` — LeRobot's own ``predict_action_chunk`` on a preprocessed batch, bare and with
  :class:`~gaflow.runtime.LeRobotGuidanceHook` attached (the hook pools its features from LeRobot's own prefix
  pass, so that pooling is guidance cost here);
* ``compact explicit`` — the shipped ``compact:builtin`` policy (H = 8, 4 action dims, 10 flow steps).

Arms per path: ``unguided``, ``guided`` (clean estimate, GAF's β = 3, clip 1, gate k = 20; diagnostics recorded as
always), the ``zero`` control (the same work, nothing applied) and ``floor``: a hand-written loop that alternates
the policy's velocity and the critics' bare forward+backward and does nothing else (in hook mode: an RTC processor
that does just that inside LeRobot's loop) — what an ideal guidance step would cost *inside* the loop: there the
critic runs cache-cold, its weights evicted by the policy's forward pass, unlike a back-to-back timing.
Critics: ``EnsembleMLPCritic`` K = 3, hidden 512×512×512 on the ``state`` feature (0.71 M parameters per member on
the SmolVLA chunk). ``critic`` arms: the bare forward+backward of those critics × the flow steps, back to back —
one plain batched call on (features, chunk) with the gradient w.r.t. the chunk (the issue's denominator) — and the
same with the features' share of the first layer computed once per chunk, as guidance does (``prepared``).

Every arm runs under ``torch.inference_mode()`` (as a policy server calls it), except the critic arms. Reported
per arm: median ms per chunk on the wall clock and on this process's CPU clock; ``added`` = the median over rounds
of (arm − unguided) of the same round (paired, so drifting load hits both); ``× bare`` = added / bare critic
forward+backward. On a shared machine other processes inflate wall time but not our CPU time (at 1 thread the CPU
clock is the robust one; at 2 threads it also counts the second thread's work, so read wall there). The target of
issue #18: ``guided`` adds ≤ 1.3× the bare forward+backward, on every path, at 1 and 2 threads.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from gaflow.convention import step_size, time_grid
from gaflow.critic import EnsembleMLPCritic
from gaflow.guidance import CriticObjective, Guidance, GuidanceConfig
from gaflow.io import atomic_write_json
from gaflow.sampler import sample_chunks

os.environ.setdefault("HF_HUB_OFFLINE", "1")

EVICTION_ARMS = ("critic fwd+bwd, caches evicted", "cache eviction alone")
GAF = dict(estimator="clean_estimate", scale=1 / 3, clip=1.0, gate_k=20.0, gate_min=0.1)


def critic_for(features: dict[str, torch.Tensor], spec, hidden, members: int, device: str) -> EnsembleMLPCritic:
    torch.manual_seed(0)
    return EnsembleMLPCritic({"state": features["state"].shape[-1]}, spec.chunk_len, spec.action_dim,
                             hidden=hidden, num_members=members).eval().to(device)


def bare_critic_arms(critic, features: dict[str, torch.Tensor], spec) -> dict[str, Callable[[], None]]:
    """The critics' forward+backward × flow steps, back to back: plain (one batched call on (features, chunk)) and
    prepared (the features' first-layer share once per chunk, as guidance runs it)."""
    feats = {"state": features["state"].clone()}
    chunk = torch.randn(1, spec.chunk_len, spec.action_dim, generator=torch.Generator().manual_seed(1))
    chunk = chunk.to(feats["state"].device)
    objective = CriticObjective(critic, feats)

    def plain():
        for _ in range(spec.num_steps):
            c = chunk.detach().requires_grad_(True)
            torch.autograd.grad(critic(feats, c).mean(0).sum(), c)

    def prepared():
        for _ in range(spec.num_steps):
            objective.value_and_grad(chunk)

    return {"critic fwd+bwd": plain, "critic fwd+bwd, prepared": prepared}


def eviction_arms(critic, features: dict[str, torch.Tensor], spec, megabytes: int) -> dict[str, Callable[[], None]]:
    """Why the floor exceeds the back-to-back critic: the same bare forward+backward × flow steps with
    ``megabytes`` of memory streamed through the caches before each step (as a policy's forward pass does), and
    that streaming alone (subtract it)."""
    feats = {"state": features["state"].clone()}
    chunk = torch.randn(1, spec.chunk_len, spec.action_dim, generator=torch.Generator().manual_seed(1))
    chunk = chunk.to(feats["state"].device)
    junk = torch.ones(megabytes * 2**18, device=feats["state"].device)  # float32: 4 bytes each

    def stream():
        junk.mul_(1.0)  # reads and writes every byte

    def evicted():
        for _ in range(spec.num_steps):
            stream()
            c = chunk.detach().requires_grad_(True)
            torch.autograd.grad(critic(feats, c).mean(0).sum(), c)

    def streaming_alone():
        for _ in range(spec.num_steps):
            stream()

    return dict(zip(EVICTION_ARMS, (evicted, streaming_alone), strict=True))


def floor_arm(policy, context, critic, features, noise: torch.Tensor) -> Callable[[], None]:
    """The policy's Euler loop with the bare critic forward+backward at every step and nothing else."""
    spec = policy.spec
    d, n = spec.action_dim, spec.num_steps
    grid, dt = time_grid(spec.convention, n), step_size(spec.convention, n)
    feats = {"state": features["state"].clone()}

    def run():  # called under inference mode, like every arm
        x = noise
        for k in range(n):
            v = policy.velocity(context, x, grid[k].expand(x.shape[0]))
            with torch.inference_mode(False), torch.enable_grad():
                c = x[..., :d].clone().requires_grad_(True)
                torch.autograd.grad(critic(feats, c).mean(0).sum(), c)
            x = x + dt * v

    return run


class FloorProcessor:
    """Hook mode's floor: an RTC processor that returns LeRobot's own velocity after the bare critic
    forward+backward, and does nothing else."""

    def __init__(self, critic, features: dict[str, torch.Tensor], action_dim: int) -> None:
        self.critic, self.features, self.d = critic, {"state": features["state"].clone()}, action_dim

    def denoise_step(self, x_t, prev_chunk_left_over=None, inference_delay=None, time=1.0,
                     original_denoise_step_partial=None, execution_horizon=None):
        v = original_denoise_step_partial(x_t)
        with torch.inference_mode(False), torch.enable_grad():
            c = x_t[..., : self.d].clone().requires_grad_(True)
            torch.autograd.grad(self.critic(self.features, c).mean(0).sum(), c)
        return v

    def is_debug_enabled(self) -> bool:
        return False

    def track(self, **kwargs) -> None:
        pass


def smolvla_paths(args, workdir: str) -> tuple[dict, dict, dict]:
    """Tiny SmolVLA, H = 50, 7 real dims padded to 32: explicit loop and hook mode."""
    from gaflow.policies.lerobot import wrap_lerobot_policy
    from gaflow.runtime import LeRobotGuidanceHook
    from gaflow.testing.lerobot_tiny import OfflineModelConfig, build_offline_policy, example_observation

    cfg = OfflineModelConfig(family="smolvla", size="tiny", action_dim=7, state_dim=8, chunk_size=50,
                             extra={"device": args.device})
    policy, pre, post = build_offline_policy(cfg, workdir)
    policy.to(args.device)
    adapter = wrap_lerobot_policy(policy, pre, post)
    spec = adapter.spec
    obs = example_observation(policy.config, 1, seed=0)
    noise = torch.randn(1, spec.chunk_len, spec.padded_dim, generator=torch.Generator().manual_seed(0))
    noise = noise.to(args.device)
    with torch.inference_mode():
        ctx = adapter.encode(obs)
        batch = adapter.preprocess(obs)
    critic = critic_for(ctx.features, spec, args.critic_hidden, args.members, args.device)
    guided, zero = Guidance(critic, GuidanceConfig(**GAF)), Guidance(critic, GuidanceConfig(**GAF, control="zero"))
    hook_g, hook_z = LeRobotGuidanceHook(adapter, guided), LeRobotGuidanceHook(adapter, zero)

    def hooked(hook):
        def run():
            with hook:
                policy.predict_action_chunk(batch, noise=noise.clone())
        return run

    floor_processor = FloorProcessor(critic, ctx.features, spec.action_dim)

    def hook_floor():
        from lerobot.policies.rtc.configuration_rtc import RTCConfig

        saved = policy.config.rtc_config, policy.model.rtc_processor
        policy.config.rtc_config, policy.model.rtc_processor = RTCConfig(enabled=True), floor_processor
        try:
            policy.predict_action_chunk(batch, noise=noise.clone())
        finally:
            policy.config.rtc_config, policy.model.rtc_processor = saved

    explicit = {
        "unguided": lambda: sample_chunks(adapter, context=ctx, noise=noise),
        "guided": lambda: sample_chunks(adapter, context=ctx, noise=noise, guidance=guided),
        "zero": lambda: sample_chunks(adapter, context=ctx, noise=noise, guidance=zero),
        "floor": floor_arm(adapter, ctx, critic, ctx.features, noise),
        # diagnostics are summarised when read: this arm pays for reading them
        "guided + summary()": lambda: sample_chunks(adapter, context=ctx, noise=noise,
                                                    guidance=guided).diagnostics.summary(),
    }
    hook = {
        "unguided": lambda: policy.predict_action_chunk(batch, noise=noise.clone()),
        "guided": hooked(hook_g),
        "zero": hooked(hook_z),
        "floor": hook_floor,
    }
    with torch.inference_mode():  # the controls must not change a bit of the output
        ref = sample_chunks(adapter, context=ctx, noise=noise).chunk
        assert torch.equal(sample_chunks(adapter, context=ctx, noise=noise, guidance=zero).chunk, ref)
        lerobot = policy.predict_action_chunk(batch, noise=noise.clone())
        with hook_z:
            assert torch.equal(policy.predict_action_chunk(batch, noise=noise.clone()), lerobot)
    info = {"policy_params": sum(p.numel() for p in policy.parameters()), "chunk_len": spec.chunk_len,
            "action_dim": spec.action_dim, "padded_dim": spec.padded_dim, "num_steps": spec.num_steps,
            "critic_params_per_member": sum(p.numel() for p in critic.parameters()) // args.members}
    bare = bare_critic_arms(critic, ctx.features, spec)
    if args.evict_mb:
        bare.update(eviction_arms(critic, ctx.features, spec, args.evict_mb))
    return {"explicit": explicit, "hook": hook}, bare, info


def compact_path(args) -> tuple[dict, dict, dict]:
    """The shipped compact policy, H = 8, 4 action dims (no padding); encoded on the CPU, then moved."""
    from gaflow.policies.registry import load_policy

    policy = load_policy("compact:builtin")
    spec = policy.spec
    g = torch.Generator().manual_seed(0)
    obs = {"observation.image": torch.rand(1, 3, policy.config.image_size, policy.config.image_size, generator=g),
           "observation.state": torch.randn(1, policy.config.state_dim, generator=g),
           "observation.environment_state": torch.randn(1, policy.config.env_state_dim, generator=g),
           "task": ["insert the gripper into the hole"]}
    noise = torch.randn(1, spec.chunk_len, spec.padded_dim, generator=g)
    with torch.inference_mode():
        ctx = policy.encode(obs)
    # the velocity reads only the context and the action expert; the CPU normaliser is not needed past encode
    policy.to(args.device)
    ctx, noise = {k: v.to(args.device) for k, v in ctx.items()}, noise.to(args.device)
    feats = policy.critic_features(ctx)
    critic = critic_for(feats, spec, args.critic_hidden, args.members, args.device)
    guided, zero = Guidance(critic, GuidanceConfig(**GAF)), Guidance(critic, GuidanceConfig(**GAF, control="zero"))
    arms = {
        "unguided": lambda: sample_chunks(policy, context=ctx, noise=noise),
        "guided": lambda: sample_chunks(policy, context=ctx, noise=noise, guidance=guided),
        "zero": lambda: sample_chunks(policy, context=ctx, noise=noise, guidance=zero),
        "floor": floor_arm(policy, ctx, critic, feats, noise),
    }
    with torch.inference_mode():
        assert torch.equal(sample_chunks(policy, context=ctx, noise=noise, guidance=zero).chunk,
                           sample_chunks(policy, context=ctx, noise=noise).chunk)
    info = {"chunk_len": spec.chunk_len, "action_dim": spec.action_dim, "num_steps": spec.num_steps,
            "critic_params_per_member": sum(p.numel() for p in critic.parameters()) // args.members}
    bare = bare_critic_arms(critic, feats, spec)
    if args.evict_mb:
        bare.update(eviction_arms(critic, feats, spec, args.evict_mb))
    return {"explicit": arms}, bare, info


def time_rounds(fns: dict[str, Callable[[], None]], rounds: int, warmup: int) -> dict[str, dict[str, list[float]]]:
    """Per-call ms of every function, round-robin, on the wall clock and this process's CPU clock. The order is
    shuffled every round (seeded), so no arm always inherits the caches another arm left warm."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    order, rng = list(fns), random.Random(0)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            fn = fns[name]
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name].append((time.perf_counter() - w0) * 1e3)
            cpu[name].append((time.process_time() - c0) * 1e3)
    return {"wall": wall, "cpu": cpu}


def paired_added(times: dict[str, list[float]], arm: str, base: str) -> float:
    """Median over rounds of (arm − base) in the same round: drifting machine load hits both sides alike."""
    return statistics.median(x - y for x, y in zip(times[arm], times[base], strict=True))


def in_inference_mode(fn: Callable[[], object], sync: Callable[[], None]) -> Callable[[], None]:
    def run():
        with torch.inference_mode():
            fn()
        sync()
    return run


def synced(fn: Callable[[], object], sync: Callable[[], None]) -> Callable[[], None]:
    def run():
        fn()
        sync()
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--paths", nargs="+", default=["smolvla", "compact"], choices=["smolvla", "compact"])
    ap.add_argument("--critic-hidden", type=int, nargs="+", default=[512, 512, 512])
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="cuda: the same arms on the GPU (wall clock only; --threads still sets the CPU threads)")
    ap.add_argument("--evict-mb", type=int, default=0,
                    help="also time the bare critic with this many MB streamed through the caches before each step")
    ap.add_argument("--json", type=str, default=None, help="also write the results here (atomically)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    clocks = ("wall",) if args.device == "cuda" else ("wall", "cpu")
    console = Console(width=160)

    workdir = tempfile.TemporaryDirectory(prefix="gaflow_overhead_")
    paths: dict[str, dict[str, Callable]] = {}
    bare: dict[str, dict[str, Callable]] = {}
    info: dict[str, dict] = {}
    evictors: dict[str, dict[str, Callable]] = {}
    if "smolvla" in args.paths:
        sv, sv_bare, info["smolvla"] = smolvla_paths(args, workdir.name)
        paths["smolvla explicit"], paths["smolvla hook"] = sv["explicit"], sv["hook"]
        evictors["smolvla"] = {k: sv_bare.pop(k) for k in list(sv_bare) if k in EVICTION_ARMS}
        bare["smolvla explicit"] = bare["smolvla hook"] = sv_bare
    if "compact" in args.paths:
        cp, cp_bare, info["compact"] = compact_path(args)
        paths["compact explicit"] = cp["explicit"]
        evictors["compact"] = {k: cp_bare.pop(k) for k in list(cp_bare) if k in EVICTION_ARMS}
        bare["compact explicit"] = cp_bare
    console.print(f"paths: {info}")

    results: dict = {"args": vars(args), "info": info, "torch": torch.__version__, "threads": {}}
    for threads in args.threads:
        torch.set_num_threads(threads)
        fns: dict[str, Callable[[], None]] = {}
        for path, arms in paths.items():
            for arm, fn in arms.items():
                fns[f"{path}/{arm}"] = in_inference_mode(fn, sync)
        critic_keys = {}
        for path, arms in bare.items():
            family = path.split()[0]
            for arm, fn in arms.items():
                critic_keys[(family, arm)] = f"{family} {arm}"
                fns[f"{family} {arm}"] = synced(fn, sync)
        load0 = os.getloadavg()
        t = time_rounds(fns, args.rounds, args.warmup)
        load1 = os.getloadavg()
        t = {c: t[c] for c in clocks}
        med = {c: {k: statistics.median(v) for k, v in t[c].items()} for c in t}
        table = Table(title=f"{args.device}, {threads} thread(s), {args.rounds} shuffled rounds; load average "
                            f"{load0[0]:.1f} → {load1[0]:.1f} on {os.cpu_count()} CPUs; ms per chunk (median); "
                            "added = median of (arm − unguided) per round")
        table.add_column("path / arm")
        for c in clocks:
            for col in ("ms", "added", "× bare", "× floor"):
                table.add_column(f"{col} ({c})", justify="right")
        summary: dict = {"load_average": [load0, load1], "median_ms": med, "added_ms": {}, "ratio": {},
                         "ratio_prepared": {}, "ratio_floor": {}}
        for path, arms in paths.items():
            family = path.split()[0]

            for arm in arms:
                key = f"{path}/{arm}"
                row = [key]
                for c in clocks:
                    a = paired_added(t[c], key, f"{path}/unguided")
                    bare_ms, prep_ms = med[c][f"{family} critic fwd+bwd"], med[c][f"{family} critic fwd+bwd, prepared"]
                    floor = paired_added(t[c], f"{path}/floor", f"{path}/unguided") if "floor" in arms else float("nan")
                    if arm != "unguided":
                        summary["added_ms"].setdefault(key, {})[c] = a
                        summary["ratio"].setdefault(key, {})[c] = a / bare_ms
                        summary["ratio_prepared"].setdefault(key, {})[c] = a / prep_ms
                        summary["ratio_floor"].setdefault(key, {})[c] = a / floor
                    row += [f"{med[c][key]:.2f}"] + (["—"] * 3 if arm == "unguided" else [
                        f"{a:.2f}", f"{a / bare_ms:.2f}", "—" if arm == "floor" or floor != floor else f"{a / floor:.2f}"])
                table.add_row(*row)
        for name in sorted(set(critic_keys.values())):
            table.add_row(name, *(x for c in clocks for x in (f"{med[c][name]:.2f}", "", "", "")))
        console.print(table)
        if args.evict_mb:
            for family in sorted({p.split()[0] for p in paths}):
                ev = time_rounds({k: synced(f, sync) for k, f in evictors[family].items()}, args.rounds, args.warmup)
                e = {c: statistics.median(x - y for x, y in zip(ev[c]["critic fwd+bwd, caches evicted"],
                                                                ev[c]["cache eviction alone"], strict=True))
                     for c in clocks}
                summary.setdefault("evicted_critic_ms", {})[family] = e
                console.print(f"{family} critic fwd+bwd × steps with {args.evict_mb} MB streamed through the caches "
                              "before each step (minus the streaming alone): "
                              + ", ".join(f"{e[c]:.2f} ms {c} = {e[c] / med[c][f'{family} critic fwd+bwd']:.2f}× "
                                          "back to back" for c in clocks))
        results["threads"][str(threads)] = summary
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, results)
    workdir.cleanup()


if __name__ == "__main__":
    main()
