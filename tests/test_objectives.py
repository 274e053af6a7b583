"""Objective terms beside the critic (issue #17): smoothness / effort / speed, keep_out / bounds, the hard-constraint
projection, presets — each against an analytic answer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import LinearCritic, gaussian_policy

from gaflow.envs.base import ActionPath
from gaflow.guidance import Constraints, Guidance, GuidanceConfig, preset_guidance, register_term
from gaflow.guidance.context import affine_decode
from gaflow.guidance.terms_space import Box, Sphere, parse_zone
from gaflow.normalize import Normalizer
from gaflow.sampler import SamplerConfig, sample_chunks

PATH2 = ActionPath("observation.state", (0, 1), (0, 1), (0.1, 0.1))


def _difference_matrix(length: int, order: int) -> torch.Tensor:
    d = torch.eye(length)
    for _ in range(order):
        d = d[1:] - d[:-1]
    return d  # (length − order, length)


def _smoothness_pieces(k: int, h: int, order: int):
    """D_e, D_a: the rows of the order-m difference of [executed (k); chunk (h)] whose stencil touches the chunk."""
    d = _difference_matrix(k + h, order)[max(0, k - order):]
    return d[:, :k], d[:, k:]


def _objective(entries, context=None, critic=None):
    return Guidance(critic, GuidanceConfig(objectives=entries)).objective({}, context)


# ---------------------------------------------------------------------------------------------- smoothness
@pytest.mark.parametrize("order", [1, 2, 3])
def test_smoothness_is_the_quadratic_form_of_differences_across_the_executed_boundary(order):
    k, h = 3, 5
    executed, chunk = torch.randn(2, k, 3), torch.randn(2, h, 3)
    val, g = _objective([{"name": "smoothness", "weight": 0.7, "order": order}],
                        {"executed_actions": executed}).value_and_grad(chunk)
    d_e, d_a = _smoothness_pieces(k, h, order)
    r = d_e @ executed + d_a @ chunk  # (B, n, 3) residual differences
    n = d_a.shape[0]
    torch.testing.assert_close(val.terms["smoothness"], -r.pow(2).sum((1, 2)) / n)
    torch.testing.assert_close(g, -0.7 * 2 / n * d_a.T @ r)
    # without the boundary, only the chunk's own differences count
    val_b, _ = _objective([{"name": "smoothness", "order": order, "boundary": False}],
                          {"executed_actions": executed}).value_and_grad(chunk)
    torch.testing.assert_close(val_b.terms["smoothness"], -torch.diff(chunk, order, 1).pow(2).sum(2).mean(1))


@pytest.mark.parametrize("convention", ["lerobot", "forward"])
def test_smoothness_guidance_moves_a_gaussian_chunk_towards_the_exact_tilted_mean_and_lowers_jerk(convention):
    """Base flow N(μ, I) with a zig-zag μ; J = −(w/n)‖D[e; a]‖². The KL-tilted target π·exp(J) is Gaussian with
    precision I + (2w/n)D_aᵀD_a and mean P⁻¹(μ − (2w/n)D_aᵀD_e e): guidance moves the mean along that shift."""
    h, d, k, order, w, n = 6, 2, 2, 2, 0.5, 2000
    policy = gaussian_policy(convention, chunk_len=h, action_dim=d, padded_dim=d, std=1.0, num_steps=20)
    zigzag = torch.tensor([1.0, -1.0] * 3).view(1, h, 1).expand(n, h, d).contiguous()
    executed = torch.tensor([[0.5, 0.5], [-1.0, -1.0]]).expand(n, k, d)
    noise = torch.randn(n, h, d, generator=torch.Generator().manual_seed(0))
    base = sample_chunks(policy, zigzag, noise=noise).chunk
    cfg = GuidanceConfig(scale=1.0, objectives=[{"name": "smoothness", "weight": w, "order": order}])
    out = sample_chunks(policy, zigzag, noise=noise, guidance=Guidance(None, cfg),
                        objective_context={"executed_actions": executed}).chunk
    d_e, d_a = _smoothness_pieces(k, h, order)
    m = d_a.shape[0]
    precision = torch.eye(h) + 2 * w / m * d_a.T @ d_a
    exact = torch.linalg.solve(precision, zigzag[0] - 2 * w / m * d_a.T @ d_e @ executed[0])
    shift, exact_shift = (out - base).mean(0).flatten(), (exact - zigzag[0]).flatten()
    cosine = float(shift @ exact_shift / (shift.norm() * exact_shift.norm()))
    assert cosine > 0.999
    assert 1.2 < float(shift.norm() / exact_shift.norm()) < 1.6  # J = I overshoots, as for a linear critic

    def jerk(c):  # per sample, over the executed boundary too
        return torch.diff(torch.cat([executed, c], 1), 3, dim=1).pow(2).sum((1, 2))

    assert float(jerk(out).mean()) < 0.1 * float(jerk(base).mean())
    assert (jerk(out) < jerk(base)).float().mean() > 0.99


def test_zero_weight_terms_reproduce_the_critic_only_chunk_bit_for_bit():
    policy = gaussian_policy("lerobot", chunk_len=5, action_dim=2, padded_dim=3)
    mu, noise = torch.randn(4, 5, 3), torch.randn(4, 5, 3)
    context = {"executed_actions": torch.randn(4, 3, 2), "action_scale": torch.full((4, 2), 0.5),
               "action_offset": torch.zeros(4, 2), "ee_position": torch.zeros(4, 2), "action_path": PATH2}
    critic = LinearCritic(torch.randn(5, 2))
    alone = sample_chunks(policy, mu, noise=noise, guidance=Guidance(critic, GuidanceConfig(relative=0.3)))
    zeros = [{"name": "critic"}, {"name": "smoothness", "weight": 0.0}, {"name": "effort", "weight": 0.0},
             {"name": "speed", "weight": 0.0}, {"name": "bounds", "weight": 0.0, "low": [-0.1] * 2, "high": [0.1] * 2},
             {"name": "keep_out", "weight": 0.0, "zones": [{"type": "sphere", "center": [0, 0], "radius": 0.2}]}]
    extra = sample_chunks(policy, mu, noise=noise, objective_context=context,
                          guidance=Guidance(critic, GuidanceConfig(relative=0.3, objectives=zeros)))
    assert torch.equal(alone.chunk, extra.chunk)
    assert torch.equal(alone.diagnostics.data, extra.diagnostics.data)


class _Linear:
    def __init__(self, c):
        self.c = c

    def value(self, chunk):
        return (chunk * self.c).sum((1, 2))


C_A, C_B = torch.randn(5, 2, generator=torch.Generator().manual_seed(3)), torch.randn(5, 2)
register_term("objectives_linear_a", lambda inputs: _Linear(C_A), replace=True)
register_term("objectives_linear_b", lambda inputs: _Linear(C_B), replace=True)


def test_terms_compose_linearly():
    # gradients: for any terms, the weighted sum's gradient is the weighted sum of each one's
    context = {"executed_actions": torch.randn(3, 2, 2), "action_scale": torch.full((3, 2), 0.5),
               "action_offset": torch.full((3, 2), 0.1), "ee_position": torch.zeros(3, 2), "action_path": PATH2}
    zone = {"type": "sphere", "center": [0.05, 0.0], "radius": 0.2}
    terms = [{"name": "smoothness", "weight": 0.3}, {"name": "effort", "weight": 2.0}, {"name": "speed", "weight": 1.5},
             {"name": "keep_out", "weight": 40.0, "zones": [zone]},
             {"name": "bounds", "weight": 3.0, "low": [-0.2, None], "high": [0.2, 0.3]}]
    chunk = torch.randn(3, 5, 2)
    val, g = _objective(terms, context).value_and_grad(chunk)
    parts = [_objective([t], context).value_and_grad(chunk) for t in terms]
    torch.testing.assert_close(g, sum(p[1] for p in parts))
    torch.testing.assert_close(val.total, sum(p[0].total for p in parts))
    assert all(float(p[1].abs().sum()) > 0 for p in parts)  # every term pulled
    # sampled chunks: for linear terms on a Gaussian flow the shifts of the two terms add up exactly
    policy, mu, noise = gaussian_policy("forward", chunk_len=5), torch.randn(6, 5, 3), torch.randn(6, 5, 3)
    base = sample_chunks(policy, mu, noise=noise).chunk

    def shift(objectives):
        cfg = GuidanceConfig(scale=0.4, objectives=objectives)
        return sample_chunks(policy, mu, noise=noise, guidance=Guidance(None, cfg)).chunk - base

    both = shift([{"name": "objectives_linear_a", "weight": 0.3}, {"name": "objectives_linear_b", "weight": 2.0}])
    each = shift([{"name": "objectives_linear_a", "weight": 0.3}]) + shift([{"name": "objectives_linear_b",
                                                                              "weight": 2.0}])
    torch.testing.assert_close(both, each, atol=1e-5, rtol=1e-5)


def test_term_shares_of_the_applied_guidance_sum_to_one():
    context = {"executed_actions": torch.randn(4, 3, 2)}
    cfg = GuidanceConfig(scale=0.2, objectives=[{"name": "critic"}, {"name": "smoothness", "weight": 0.5}])
    out = sample_chunks(gaussian_policy("lerobot", chunk_len=5), torch.randn(4, 5, 3), noise=torch.randn(4, 5, 3),
                        guidance=Guidance(LinearCritic(C_A), cfg), objective_context=context)
    shares = out.diagnostics.terms["critic"][2] + out.diagnostics.terms["smoothness"][2]
    torch.testing.assert_close(shares, torch.ones_like(shares))
    s = out.diagnostics.summary()
    assert s["term_critic_share_mean"] + s["term_smoothness_share_mean"] == pytest.approx(1.0, abs=1e-5)


# ---------------------------------------------------------------------------------------------- env units
def test_effort_and_speed_work_in_env_units_through_the_affine_decode():
    scale, offset = torch.tensor([[2.0, 0.5]]), torch.tensor([[0.1, -0.2]])
    context = {"action_scale": scale, "action_offset": offset, "action_path": PATH2, "ee_position": torch.zeros(1, 2)}
    chunk = torch.tensor([[[0.2, 0.4], [-0.3, 0.4], [0.0, 1.0]]])
    env = chunk * scale + offset
    val = _objective([{"name": "effort", "dims": "all"}, {"name": "speed"}], context).value(chunk)
    torch.testing.assert_close(val.terms["effort"], -env.pow(2).sum(2).mean(1))
    net = (0.1 * env.clamp(-1, 1)).sum(1)
    torch.testing.assert_close(val.terms["speed"], net.norm(dim=1) / 3)
    # "position" effort = the path's dims; here both, so the same value
    pos = _objective([{"name": "effort"}], context).value(chunk)
    torch.testing.assert_close(pos.terms["effort"], val.terms["effort"])


def test_terms_that_need_the_decode_or_an_action_path_fail_naming_what_is_missing():
    chunk = torch.zeros(1, 3, 2)
    with pytest.raises(ValueError, match="'keep_out' needs 'action_path'"):
        _objective([{"name": "keep_out", "zones": [{"type": "sphere", "center": [0, 0], "radius": 1}]}],
                   {"action_scale": torch.ones(1, 2), "action_offset": torch.zeros(1, 2)})
    with pytest.raises(ValueError, match="'effort' needs 'action_scale'"):
        _objective([{"name": "effort", "dims": "all"}], None)
    with pytest.raises(ValueError, match="'speed' needs 'action_path'"):
        _objective([{"name": "speed"}], {"action_scale": torch.ones(1, 2), "action_offset": torch.zeros(1, 2)})
    with pytest.raises(ValueError, match="dims"):
        _objective([{"name": "smoothness", "dims": [5]}]).value(chunk)


@pytest.mark.parametrize("entry, message", [
    ({"name": "smoothness", "order": 4}, "order must be one of"),
    ({"name": "smoothness", "dims": [0, 0]}, "dims"),
    ({"name": "effort", "dims": "some"}, "dims"),
    ({"name": "keep_out", "zones": []}, "zones must be a non-empty list"),
    ({"name": "keep_out", "zones": [{"type": "cube"}]}, r"zones\[0\] must be"),
    ({"name": "keep_out", "zones": [{"type": "box", "low": [0, 0], "high": [1, 0]}]}, "low < high"),
    ({"name": "keep_out", "zones": [{"type": "sphere", "center": [0, 0], "radius": -1}]}, "radius > 0"),
    ({"name": "keep_out", "zones": [{"type": "sphere", "center": [0, 0], "radius": 1}], "margin": -0.1}, "margin"),
    ({"name": "keep_out", "zones": [{"type": "sphere", "center": [0, 0], "radius": 1}], "project": 1}, "project"),
    ({"name": "bounds", "low": [0, 0], "high": [1]}, "same length"),
    ({"name": "bounds", "low": [1.0], "high": [0.0]}, "low ≤ high"),
    ({"name": "bounds", "low": [float("nan")], "high": [1.0]}, "finite"),
])
def test_bad_term_parameters_are_refused_when_the_config_is_built(entry, message):
    with pytest.raises(ValueError, match=rf"objectives\[0\] \('{entry['name']}'\): .*{message}"):
        GuidanceConfig(objectives=[entry])


def test_affine_decode_recovers_the_policy_normaliser_and_refuses_other_maps():
    norm = Normalizer({"action": {"mean": torch.tensor([0.1, -0.2, 0.3]), "std": torch.tensor([0.5, 2.0, 1.0])}})
    scale, offset = affine_decode(lambda c: norm.unnormalize("action", c[..., :3]), 3, 5)
    torch.testing.assert_close(scale, torch.tensor([0.5, 2.0, 1.0]))
    torch.testing.assert_close(offset, torch.tensor([0.1, -0.2, 0.3]))
    assert affine_decode(lambda c: torch.tanh(c[..., :2]), 2, 2) is None  # not affine
    mix = torch.tensor([[1.0, 0.5], [0.0, 1.0]])
    assert affine_decode(lambda c: c[..., :2] @ mix, 2, 2) is None  # dims mixed


def test_action_path_is_what_the_toy_env_executes():
    from gaflow.envs.toy import ToyReachEnv

    env = ToyReachEnv(step_size=0.07)
    obs = env.reset(5)
    actions = np.random.default_rng(0).uniform(-1.5, 1.5, (6, 2)).astype(np.float32)
    predicted = env.action_path.predict(torch.from_numpy(env.action_path.position(obs)).unsqueeze(0),
                                        torch.from_numpy(actions).double().unsqueeze(0))[0]
    for k, a in enumerate(actions):
        obs, *_ = env.step(a)
        np.testing.assert_allclose(env.action_path.position(obs), predicted[k].numpy(), atol=1e-6)


def test_each_env_states_its_action_path():
    from gaflow.envs.registry import env_info

    mw = env_info("metaworld", "push", image_size=64).action_path
    assert (mw.action_dims, mw.step_scale, mw.position_index) == ((0, 1, 2), (0.01,) * 3, (0, 1, 2))
    assert env_info("toy").action_path.step_scale == (0.12, 0.12)
    libero = env_info("libero:libero_spatial", environment_state_dim=10).action_path
    assert libero.step_scale == (0.05,) * 3
    assert env_info("metaworld", render=False).select(["observation.environment_state"]).action_path is None


# ---------------------------------------------------------------------------------------------- keep_out
def test_zone_signed_distances_and_segment_entries():
    box, ball = Box((0.0, 0.0), (1.0, 2.0)), Sphere((0.0, 0.0), 1.0)
    p = torch.tensor([[0.5, 1.0], [0.9, 1.0], [2.0, 1.0], [2.0, 3.0]])
    torch.testing.assert_close(box.signed_distance(p), torch.tensor([-0.5, -0.1, 1.0, math.sqrt(2)]))
    torch.testing.assert_close(ball.signed_distance(p[:1]), torch.tensor([math.sqrt(1.25) - 1]))
    assert box.entry(np.array([-1.0, 1.0]), np.array([1.0, 1.0]), 0.0) == pytest.approx(0.5)
    assert box.entry(np.array([-1.0, 3.0]), np.array([1.0, 3.0]), 0.0) == math.inf
    assert ball.entry(np.array([-2.0, 0.0]), np.array([0.0, 0.0]), 0.0) == pytest.approx(0.5)
    assert ball.entry(np.array([-2.0, 2.0]), np.array([2.0, 2.0]), 0.0) == math.inf
    assert parse_zone({"type": "sphere", "center": [1, 2], "radius": 3}) == Sphere((1.0, 2.0), 3.0)


def test_keep_out_gradient_pushes_a_predicted_point_out_and_is_zero_beyond_the_margin():
    context = {"action_scale": torch.ones(1, 2), "action_offset": torch.zeros(1, 2), "ee_position": torch.zeros(1, 2),
               "action_path": PATH2}
    zone = {"type": "sphere", "center": [0.25, 0.0], "radius": 0.1}
    objective = _objective([{"name": "keep_out", "zones": [zone], "margin": 0.02}], context)
    inside = torch.tensor([[[1.0, 0.0], [1.0, 0.2], [0.0, 0.0]]])  # path (0.1, 0) (0.2, 0.02) (0.2, 0.02)
    val, g = objective.value_and_grad(inside)
    depth = 0.02 + 0.1 - math.hypot(0.05, 0.02)
    torch.testing.assert_close(val.terms["keep_out"], torch.tensor([-2 * depth**2]))
    stepped = objective.value(inside + 0.05 * g)
    assert float(stepped.total) > float(val.total)
    far = torch.tensor([[[-1.0, 0.0], [-1.0, 0.0], [0.0, 0.0]]])
    val_far, g_far = objective.value_and_grad(far)
    assert float(val_far.total) == 0.0 and float(g_far.abs().sum()) == 0.0


def _project(constraints, chunk, start, scale, offset, path=PATH2):
    context = {"action_scale": scale, "action_offset": offset, "ee_position": start, "action_path": path}
    d = scale.shape[1]
    return constraints.apply(chunk, context, lambda c: c[..., :d] * scale.unsqueeze(1) + offset.unsqueeze(1))


def test_projection_never_leaves_a_predicted_point_inside_a_zone():
    zones = [{"type": "box", "low": [0.1, -0.1], "high": [0.3, 0.1]},
             {"type": "sphere", "center": [-0.2, 0.15], "radius": 0.08},
             {"type": "sphere", "center": [0.3, 0.1], "radius": 0.06}]  # overlaps the box's corner
    entries = [{"name": "keep_out", "weight": 0.0, "zones": zones, "margin": 0.005, "project": True},
               {"name": "bounds", "weight": 0.0, "low": [-0.8, -0.8, None], "high": [0.8, 0.9, None], "project": True}]
    constraints = Constraints.from_objectives(GuidanceConfig(objectives=entries).objectives_)
    g = torch.Generator().manual_seed(0)
    n, h = 400, 8
    scale, offset = torch.tensor([[0.6, 0.4, 1.0]]).expand(n, 3), torch.tensor([[0.05, -0.1, 0.0]]).expand(n, 3)
    start = torch.rand(n, 2, generator=g) * 0.8 - 0.4
    parsed = [parse_zone(z) for z in zones]
    outside = torch.stack([z.signed_distance(start) >= 0.005 + 1e-4 for z in parsed]).all(0)
    chunk = torch.randn(n, h, 4, generator=g) * 2  # 3 real dims + 1 padded; path dims are the first two
    out, reports = _project(constraints, chunk, start.double(), scale, offset)
    env = out[..., :3] * scale.unsqueeze(1) + offset.unsqueeze(1)
    path = PATH2.predict(start.double(), env.double())
    sd = torch.stack([z.signed_distance(path) for z in parsed]).min(0).values  # (n, h)
    assert (sd[outside] >= 0.005).all()  # never inside, and at least the margin away
    assert sum(r["keep_out_violations_before"] for r in reports) > 50  # the raw chunks did enter the zones
    assert all(r["keep_out_violations_after"] == 0 for r, ok in zip(reports, outside, strict=True) if ok)
    assert all(r["bounds_violations_after"] == 0 for r in reports)
    assert (env[..., 0].abs() <= 0.8 + 1e-6).all() and (env[..., 1] <= 0.9 + 1e-6).all()
    assert torch.equal(out[..., 3], chunk[..., 3])  # the padded dim is never touched
    untouched = torch.tensor([r["projected_steps"] == 0 and r["bounds_violations_before"] == 0 for r in reports])
    assert torch.equal(out[untouched], chunk[untouched])  # a feasible chunk comes back bit for bit


def test_projection_slides_along_a_wall_rather_than_stopping():
    constraints = Constraints.from_objectives(GuidanceConfig(objectives=[
        {"name": "keep_out", "weight": 0.0, "project": True,
         "zones": [{"type": "box", "low": [0.15, -1.0], "high": [1.0, 0.25]}]}]).objectives_)
    chunk = torch.tensor([[[1.0, 0.5]] * 6])  # heads diagonally into the wall x = 0.15 (y below 0.25)
    out, (report,) = _project(constraints, chunk, torch.zeros(1, 2, dtype=torch.float64), torch.ones(1, 2),
                              torch.zeros(1, 2))
    path = PATH2.predict(torch.zeros(1, 2, dtype=torch.float64), out.double())[0]
    assert report["keep_out_violations_before"] > 0 and report["keep_out_violations_after"] == 0
    # the path reaches the wall's plane and moves along it (y keeps growing) until it clears the top
    assert path[:, 1].tolist() == sorted(path[:, 1].tolist()) and float(path[-1, 1]) > 0.2
    assert float(path[-1, 0]) > 0.15


def test_a_start_inside_a_zone_is_reported_not_hidden():
    constraints = Constraints.from_objectives(GuidanceConfig(objectives=[
        {"name": "keep_out", "weight": 0.0, "project": True,
         "zones": [{"type": "sphere", "center": [0.0, 0.0], "radius": 0.5}]}]).objectives_)
    chunk = torch.zeros(1, 4, 2)  # stays put, inside
    _, (report,) = _project(constraints, chunk, torch.zeros(1, 2, dtype=torch.float64), torch.ones(1, 2),
                            torch.zeros(1, 2))
    assert report["keep_out_violations_before"] == 4 and report["keep_out_violations_after"] > 0


def test_no_projected_term_means_no_constraints():
    cfg = GuidanceConfig(objectives=[{"name": "keep_out", "zones": [{"type": "sphere", "center": [0, 0],
                                                                      "radius": 1}]}])
    assert Constraints.from_objectives(cfg.objectives_) is None


# ---------------------------------------------------------------------------------------------- presets
def test_presets_replace_the_objectives_and_keep_the_strength():
    cfg = preset_guidance("gentle", {"relative": 0.3, "objectives": [{"name": "critic"}]})
    assert cfg["relative"] == 0.3
    assert [e["name"] for e in cfg["objectives"]] == ["critic", "smoothness", "effort"]
    assert [e["name"] for e in preset_guidance("fast", None)["objectives"]] == ["critic", "speed"]
    GuidanceConfig.from_dict(cfg)  # valid
    with pytest.raises(ValueError, match="unknown objective preset 'calm'; presets: fast, gentle"):
        preset_guidance("calm", {})


def test_presets_run_as_evaluation_arms():
    from gaflow.evaluation.runner import standard_arms

    arms = standard_arms({"relative": 0.3}, ["unguided", "guided", "preset:gentle", "preset:fast"])
    assert [a.name for a in arms] == ["unguided", "guided", "preset:gentle", "preset:fast"]
    assert arms[2].guidance == preset_guidance("gentle", {"relative": 0.3})
    with pytest.raises(ValueError, match="unknown objective preset"):
        standard_arms({"relative": 0.3}, ["unguided", "preset:nope"])
    with pytest.raises(ValueError, match="needs a guidance config"):
        standard_arms(None, ["unguided", "preset:gentle"])


def test_best_of_n_with_a_preset_still_ranks_by_the_critic():
    cfg = GuidanceConfig.from_dict(preset_guidance("gentle", {"estimator": "none"}))
    context = {"executed_actions": torch.randn(2, 3, 2), "action_scale": torch.ones(2, 2),
               "action_offset": torch.zeros(2, 2), "ee_position": torch.zeros(2, 2), "action_path": PATH2}
    critic = LinearCritic(C_A[:4])
    out = sample_chunks(gaussian_policy("lerobot"), torch.zeros(2, 4, 3), noise=torch.randn(2, 5, 4, 3),
                        config=SamplerConfig(num_candidates=5, select="best"), guidance=Guidance(critic, cfg),
                        objective_context=context)
    q = (out.candidates[..., :2] * C_A[:4]).sum((2, 3))
    assert torch.equal(out.selected, q.argmax(1))
