"""A scripted pick-and-place expert for LIBERO tasks whose goal is one ``On``/``In`` predicate.

It reads privileged simulator state (object poses and geometry), not images, and drives robosuite's ``OSC_POSE``
controller through the phases::

    pregrasp → descend → close → lift → carry → lower → open → retreat

Goal. The single predicate of ``parsed_problem["goal_state"]`` (``["on"|"in", object, target]``); the target is
an object/fixture body or a region site. LIBERO's ``On`` is true when the object's body origin is within 3 cm (xy)
of the target's and touching it, so the expert steers the *object's* body origin over the target's (not the hand:
a bowl slips 2–3 cm in the grasp), carries it with its lowest point ``carry_clearance`` above the target's highest
point, and releases it ``release_clearance`` above the target surface.

Grasp. Generic objects: from the top at the centre of their collision box, fingers closing across the narrower
horizontal side. Bowls: on the rim, ``bowl_grasp_radius`` from the centre and ``bowl_grasp_depth`` below the rim,
fingers closing radially; the rim side is the one of ``ray_angles`` candidates whose outer finger meets the lowest
obstacle (rays cast straight down: drawer and cabinet walls, neighbouring objects).

Control. Position: proportional (``gain``, capped at ``cap``; ``fine_cap`` while descending/lowering) plus an
integral term within ``integral_radius`` of the goal — without it OSC stalls ~1 cm short. Orientation: gripper
pointing straight down at the planned yaw, proportional on the world-frame rotation error.

Limits: single pick-and-place goals only (no drawers, knobs, multi-step libero_10 tasks); success can fire while
the object is still held (LIBERO's predicate does not require a release).

>>> env = LiberoEnv("libero_spatial", 0)                              # doctest: +SKIP
>>> ep = run_expert_episode(env, PickPlaceExpert(env), init_index=0)  # doctest: +SKIP
>>> ep.success                                                         # doctest: +SKIP
True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gaflow.envs.libero import ACTION_DIM, LiberoEnv

NO_OBSTACLE = -1.0  # height reported where a ray meets nothing (the table is at ~0.9 m)
PHASES = ("pregrasp", "descend", "close", "lift", "carry", "lower", "open", "retreat", "done")


class UnsupportedTaskError(ValueError):
    """The task's goal is not a single On/In pick-and-place predicate."""


@dataclass
class PickPlaceConfig:
    """Expert parameters (lengths in metres, durations in control steps at 20 Hz)."""

    pregrasp_height: float = 0.10  # above the grasp point before descending
    lift_height: float = 0.08  # minimum lift of the hand above the grasp point
    carry_clearance: float = 0.06  # object bottom above the target's top while carrying
    path_clearance: float = 0.03  # object bottom above the highest obstacle between object and target
    release_clearance: float = 0.015  # object bottom above the target surface when opening
    retreat_height: float = 0.10
    close_steps: int = 10
    open_steps: int = 6
    gain: float = 10.0  # action units per metre of position error (1 action unit = 5 cm of OSC goal)
    cap: float = 1.0
    fine_cap: float = 0.5  # while descending/lowering within fine_radius of the goal
    fine_radius: float = 0.03
    integral_gain: float = 2.0  # per step, on the accumulated error (m)
    integral_radius: float = 0.02  # larger radii wind the integral up on the approach → overshoot
    integral_limit: float = 0.1
    rot_gain: float = 1.5  # action units per radian (1 action unit = 0.5 rad)
    reach_tol: float = 0.01  # position tolerance to leave pregrasp/lift
    grasp_tol: float = 0.006  # descend is done within this
    place_tol: float = 0.01  # object-over-target tolerance (xy) to start lowering
    rot_tol: float = 0.15  # rad, orientation tolerance to start descending
    phase_timeout: int = 80  # steps before a moving phase gives up and moves on
    generic_grasp_depth: float = 0.025  # below the top of a generic object
    min_finger_clearance: float = 0.012  # grasp point above the object's bottom
    bowl_grasp_radius: float = 0.048
    bowl_grasp_depth: float = 0.02
    hand_height: float = 0.05  # bottom of the Panda hand body above the grasp point
    ray_angles: int = 16
    max_regrasps: int = 2
    drop_distance: float = 0.08  # object farther than this from the hand while carrying = dropped


# ---------------------------------------------------------------------------------------------- geometry
def _raw(sim: Any) -> tuple[Any, Any]:
    """robosuite's MjSim wraps mujoco's MjModel/MjData; return the raw ones (geom_aabb, mj_ray need them)."""
    return sim.model._model, sim.data._data


def _subtree_geoms(model: Any, body: int) -> np.ndarray:
    """Collision geoms of ``body`` and all its descendants."""
    parent = model.body_parentid
    inside = np.zeros(model.nbody, dtype=bool)
    inside[body] = True
    for b in range(body + 1, model.nbody):  # MuJoCo orders bodies parent-before-child
        inside[b] = inside[parent[b]]
    mask = inside[model.geom_bodyid] & ((model.geom_contype != 0) | (model.geom_conaffinity != 0))
    return np.flatnonzero(mask)


def _world_box(model: Any, data: Any, geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned world bounding box (lo, hi) of ``geoms`` from MuJoCo's per-geom local boxes."""
    if geoms.size == 0:
        raise ValueError("no collision geoms to bound")
    aabb = model.geom_aabb[geoms]  # (G, 6): centre (3), half sizes (3), geom frame
    xmat = data.geom_xmat[geoms].reshape(-1, 3, 3)
    centre = data.geom_xpos[geoms] + np.einsum("gij,gj->gi", xmat, aabb[:, :3])
    half = np.einsum("gij,gj->gi", np.abs(xmat), aabb[:, 3:])
    return (centre - half).min(0), (centre + half).max(0)


def _local_extent(model: Any, data: Any, geoms: np.ndarray, body: int) -> np.ndarray:
    """Half sizes (3,) of the box of ``geoms`` expressed in ``body``'s frame."""
    rb = data.xmat[body].reshape(3, 3)
    aabb = model.geom_aabb[geoms]
    xmat = np.einsum("ij,gjk->gik", rb.T, data.geom_xmat[geoms].reshape(-1, 3, 3))
    centre = np.einsum("ij,gj->gi", rb.T, data.geom_xpos[geoms] - data.xpos[body])
    centre = centre + np.einsum("gij,gj->gi", xmat, aabb[:, :3])
    half = np.einsum("gij,gj->gi", np.abs(xmat), aabb[:, 3:])
    return ((centre + half).max(0) - (centre - half).min(0)) / 2


def down_rotation(yaw: float) -> np.ndarray:
    """Gripper orientation pointing straight down with its closing axis at ``yaw`` in the world xy plane.

    robosuite's Panda eef frame: x = finger closing axis, z = approach axis (so z = world −z here), y = z × x.
    """
    x = np.array([np.cos(yaw), np.sin(yaw), 0.0])
    z = np.array([0.0, 0.0, -1.0])
    return np.stack([x, np.cross(z, x), z], axis=1)


def rotation_error(target: np.ndarray, current: np.ndarray) -> np.ndarray:
    """World-frame axis-angle vector rotating ``current`` onto ``target`` (OSC_POSE's rotation-delta frame)."""
    r = target @ current.T
    cos = np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0)
    angle = float(np.arccos(cos))
    v = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    if angle < 1e-6:
        return 0.5 * v
    if np.pi - angle < 1e-4:  # 180°: axis from the symmetric part
        axis = np.sqrt(np.clip((np.diag(r) + 1.0) / 2.0, 0.0, None))
        return angle * axis
    return angle * v / (2.0 * np.sin(angle))


def _wrap_yaw(yaw: float, reference: float) -> float:
    """The gripper is symmetric under a half turn: pick ``yaw`` or ``yaw + π`` closest to ``reference``."""
    best = yaw
    for cand in (yaw + k * np.pi for k in range(-3, 4)):
        if abs(cand - reference) < abs(best - reference):
            best = cand
    return float(best)


# ---------------------------------------------------------------------------------------------- goal
@dataclass(frozen=True)
class PickPlaceGoal:
    """``relation`` (on|in) ``obj`` onto/into ``target``; ``target_kind`` is "body" or "site"."""

    relation: str
    obj: str
    target: str
    target_kind: str

    @classmethod
    def from_problem(cls, problem: Any) -> PickPlaceGoal:
        goal = problem.parsed_problem["goal_state"]
        if len(goal) != 1 or len(goal[0]) != 3 or goal[0][0].lower() not in ("on", "in"):
            raise UnsupportedTaskError(f"expert handles one On/In goal predicate, got goal_state={goal}")
        rel, obj, target = goal[0][0].lower(), goal[0][1], goal[0][2]
        if obj not in problem.objects_dict:
            raise UnsupportedTaskError(f"goal object {obj!r} is not a movable object")
        if target in problem.objects_dict or target in problem.fixtures_dict:
            kind = "body"
        elif target in problem.object_sites_dict:
            kind = "site"
        else:
            raise UnsupportedTaskError(f"goal target {target!r} is neither an object, a fixture nor a region")
        return cls(rel, obj, target, kind)


def is_supported(env: LiberoEnv) -> bool:
    try:
        PickPlaceGoal.from_problem(env.problem)
    except UnsupportedTaskError:
        return False
    return True


# ---------------------------------------------------------------------------------------------- expert
@dataclass
class _Plan:
    grasp: np.ndarray  # (3,) hand position at the grasp
    yaw: float  # closing-axis yaw


class PickPlaceExpert:
    """Closed-loop scripted expert; call :meth:`reset` after every ``env.reset`` and :meth:`act` every step."""

    def __init__(self, env: LiberoEnv, config: PickPlaceConfig | None = None) -> None:
        self.env = env
        self.config = config or PickPlaceConfig()
        self.goal = PickPlaceGoal.from_problem(env.problem)
        self.phase = "pregrasp"

    # ------------------------------------------------------------ state readers (privileged)
    def _ids(self) -> None:
        # Hard resets rebuild the model: look ids up again after every reset.
        problem = self.env.problem
        self._model, self._data = _raw(self.env.sim)
        self._obj_body = problem.obj_body_id[self.goal.obj]
        self._obj_geoms = _subtree_geoms(self._model, self._obj_body)
        if self.goal.target_kind == "body":
            self._target_body = problem.obj_body_id[self.goal.target]
            self._target_geoms = _subtree_geoms(self._model, self._target_body)
            self._target_site = -1
        else:
            self._target_site = self.env.sim.model.site_name2id(self.goal.target)
            parent = getattr(problem.object_sites_dict[self.goal.target], "parent_name", None)
            parent_body = problem.obj_body_id.get(parent) if parent else None
            self._target_body = -1
            self._target_geoms = (
                _subtree_geoms(self._model, parent_body) if parent_body is not None else np.array([], int)
            )
        robot = self.env.problem.robots[0]
        self._base_body = self._model.body(robot.robot_model.root_body).id
        self._robot_bodies = {
            self._model.body(n).id
            for n in list(robot.robot_model.bodies) + list(robot.gripper.bodies)
            if _has_body(self._model, n)
        }

    def _eef(self) -> tuple[np.ndarray, np.ndarray]:
        robot = self.env.problem.robots[0]
        site = robot.eef_site_id
        return np.array(self._data.site_xpos[site]), np.array(self._data.site_xmat[site]).reshape(3, 3)

    def _object_pos(self) -> np.ndarray:
        return np.array(self._data.xpos[self._obj_body])

    def _object_box(self) -> tuple[np.ndarray, np.ndarray]:
        return _world_box(self._model, self._data, self._obj_geoms)

    def _target_pos(self) -> np.ndarray:
        if self._target_site >= 0:
            return np.array(self._data.site_xpos[self._target_site])
        return np.array(self._data.xpos[self._target_body])

    def _target_top(self) -> float:
        """Highest point the carried object must clear at the target."""
        top = float(self._target_pos()[2])
        if self._target_geoms.size:
            top = max(top, float(_world_box(self._model, self._data, self._target_geoms)[1][2]))
        return top

    def _target_surface(self) -> float:
        """Height at which the object's bottom is released (plus ``release_clearance``)."""
        if self._target_site >= 0:
            return float(self._target_pos()[2])
        return float(_world_box(self._model, self._data, self._target_geoms)[1][2])

    def _gripper_opening(self) -> float:
        robot = self.env.problem.robots[0]
        q = self._data.qpos[robot._ref_gripper_joint_pos_indexes]
        return float(np.abs(q).sum())

    # ------------------------------------------------------------ planning
    def _is_bowl(self) -> bool:
        return "bowl" in self.goal.obj.lower()

    def _obstacle_height(self, xy: np.ndarray, z_from: float) -> float:
        """Height of the first non-robot, non-object geom straight below ``xy`` (−inf if none)."""
        import mujoco

        pnt = np.array([xy[0], xy[1], z_from])
        vec = np.array([0.0, 0.0, -1.0])
        geomid = np.array([-1], dtype=np.int32)
        exclude = self._obj_body
        for _ in range(8):
            dist = mujoco.mj_ray(self._model, self._data, pnt, vec, None, 1, exclude, geomid)
            if dist < 0 or geomid[0] < 0:
                return NO_OBSTACLE
            hit_z = pnt[2] - dist
            body = int(self._model.geom_bodyid[geomid[0]])
            visual = self._model.geom_contype[geomid[0]] == 0 and self._model.geom_conaffinity[geomid[0]] == 0
            if body in self._robot_bodies or body == self._obj_body or visual:
                pnt = np.array([xy[0], xy[1], hit_z - 1e-4])
                continue
            return float(hit_z)
        return NO_OBSTACLE

    def _path_top(self) -> float:
        """Highest obstacle under the straight carry path from the object to the target (object excluded),
        over a band as wide as the object: drawer walls, the cabinet, other objects."""
        lo, hi = self._object_box()
        start, end = self._object_pos()[:2], self._target_pos()[:2]
        half = 0.5 * float(max(hi[0] - lo[0], hi[1] - lo[1]))
        direction = end - start
        length = float(np.linalg.norm(direction))
        along = direction / length if length > 1e-6 else np.array([1.0, 0.0])
        side = np.array([-along[1], along[0]])
        top = NO_OBSTACLE
        z_from = float(hi[2]) + 0.3
        for u in np.linspace(-half, length, max(2, int((length + half) / 0.02) + 1)):
            for w in (-half, 0.0, half):
                top = max(top, self._obstacle_height(start + u * along + w * side, z_from))
        return top

    def _plan(self) -> _Plan:
        cfg = self.config
        _, eef_rot = self._eef()
        current_yaw = float(np.arctan2(eef_rot[1, 0], eef_rot[0, 0]))
        lo, hi = self._object_box()
        centre = self._object_pos()
        if self._is_bowl():
            rim = float(hi[2])
            base_xy = np.array(self._data.xpos[self._base_body][:2])
            target_xy = self._target_pos()[:2]
            best: tuple[float, float, float] | None = None
            for k in range(cfg.ray_angles):
                theta = 2 * np.pi * k / cfg.ray_angles
                radial = np.array([np.cos(theta), np.sin(theta)])
                tangent = np.array([-radial[1], radial[0]])
                height = NO_OBSTACLE
                # The open outer finger spans ~1.5–6 cm beyond the grasp point and ~±1.5 cm sideways.
                for d in (0.015, 0.03, 0.045, 0.06):
                    for w in (-0.015, 0.0, 0.015):
                        p = centre[:2] + (cfg.bowl_grasp_radius + d) * radial + w * tangent
                        height = max(height, self._obstacle_height(p, rim + 0.25))
                # The hand body sits ~5 cm above the grasp point and spans ~±10 cm along the closing axis: it
                # must clear tall neighbours (the cabinet next to a bowl).
                hand_bottom = rim - cfg.bowl_grasp_depth + cfg.hand_height
                hand_top = NO_OBSTACLE
                for u in (-0.10, -0.05, 0.05, 0.10):
                    for w in (-0.03, 0.03):
                        p = centre[:2] + (cfg.bowl_grasp_radius + u) * radial + w * tangent
                        hand_top = max(hand_top, self._obstacle_height(p, rim + 0.25))
                hand_hit = max(0.0, hand_top - hand_bottom)
                yaw = _wrap_yaw(theta, current_yaw)
                # The hand stays on this side of the bowl at the target too: the farther side can leave the
                # Panda at full stretch (elbow at its joint limit) above a far plate.
                offset = cfg.bowl_grasp_radius * radial
                reach = max(np.linalg.norm(centre[:2] + offset - base_xy), np.linalg.norm(target_xy + offset - base_xy))
                # Hand clear first, then the lowest obstacle under the outer finger (1 cm bins), then the shorter
                # reach (2 cm bins), then the smaller wrist turn.
                key = (round(hand_hit / 0.01), round(height / 0.01), round(reach / 0.02), abs(yaw - current_yaw), theta)
                if best is None or key[:4] < best[:4]:
                    best = key
            assert best is not None
            theta = best[4]
            xy = centre[:2] + cfg.bowl_grasp_radius * np.array([np.cos(theta), np.sin(theta)])
            grasp = np.array([xy[0], xy[1], rim - cfg.bowl_grasp_depth])
            return _Plan(grasp, _wrap_yaw(theta, current_yaw))
        half = _local_extent(self._model, self._data, self._obj_geoms, self._obj_body)
        rot = self._data.xmat[self._obj_body].reshape(3, 3)
        # Close across the narrower horizontal side of the object's own box.
        axes = [rot[:, i] for i in range(3)]
        horizontal = sorted(range(3), key=lambda i: abs(axes[i][2]))[:2]
        narrow = min(horizontal, key=lambda i: half[i])
        if abs(half[horizontal[0]] - half[horizontal[1]]) < 0.004:  # round: keep the wrist as it is
            yaw = current_yaw
        else:
            yaw = _wrap_yaw(float(np.arctan2(axes[narrow][1], axes[narrow][0])), current_yaw)
        box_centre = (lo + hi) / 2
        z = max(float(hi[2]) - cfg.generic_grasp_depth, float(lo[2]) + cfg.min_finger_clearance)
        return _Plan(np.array([box_centre[0], box_centre[1], z]), yaw)

    # ------------------------------------------------------------ control
    def reset(self) -> None:
        """Plan the grasp from the current (post-reset) simulator state."""
        self._ids()
        self.phase = "pregrasp"
        self._phase_steps = 0
        self._integral = np.zeros(3)
        self._regrasps = 0
        self._plan_now = self._plan()
        self._path_top_now = self._path_top()
        self._hold_xy: np.ndarray | None = None

    def _set_phase(self, phase: str, keep_integral: bool = False) -> None:
        self.phase = phase
        self._phase_steps = 0
        if not keep_integral:
            self._integral = np.zeros(3)

    def _move(self, target: np.ndarray, gripper: float, fine: bool = False, integrate: bool = True) -> np.ndarray:
        cfg = self.config
        pos, rot = self._eef()
        err = target - pos
        if integrate and np.linalg.norm(err) < cfg.integral_radius:
            self._integral = np.clip(self._integral + err, -cfg.integral_limit, cfg.integral_limit)
        else:
            self._integral = np.zeros(3)
        cap = cfg.fine_cap if fine and np.linalg.norm(err) < cfg.fine_radius else cfg.cap
        a_pos = np.clip(cfg.gain * err + cfg.integral_gain * self._integral, -cap, cap)
        a_rot = np.clip(cfg.rot_gain * rotation_error(down_rotation(self._plan_now.yaw), rot), -1.0, 1.0)
        return np.concatenate([a_pos, a_rot, [gripper]])

    def _carry_hand_target(self, obj_bottom_goal: float) -> tuple[np.ndarray, float]:
        """Hand goal that puts the object's body origin over the target and its bottom at ``obj_bottom_goal``."""
        pos, _ = self._eef()
        obj = self._object_pos()
        lo, _ = self._object_box()
        tgt = self._target_pos()
        xy_err = tgt[:2] - obj[:2]
        goal = np.array([pos[0] + xy_err[0], pos[1] + xy_err[1], pos[2] + (obj_bottom_goal - lo[2])])
        return goal, float(np.linalg.norm(xy_err))

    def _carry_bottom(self) -> float:
        """Height of the object's bottom while carrying."""
        cfg = self.config
        return max(self._target_top() + cfg.carry_clearance, self._path_top_now + cfg.path_clearance)

    def _dropped(self) -> bool:
        pos, _ = self._eef()
        lo, hi = self._object_box()
        nearest = np.clip(pos, lo, hi)
        return bool(np.linalg.norm(pos - nearest) > self.config.drop_distance)

    def act(self, obs: dict[str, Any] | None = None) -> np.ndarray:
        """Next 7-d action in [−1, 1] (``obs`` is unused: the expert reads the simulator)."""
        cfg = self.config
        self._phase_steps += 1
        plan = self._plan_now
        pos, rot = self._eef()
        open_, close = -1.0, 1.0

        if self.phase in ("lift", "carry", "lower") and self._dropped():
            if self._regrasps < cfg.max_regrasps:
                self._regrasps += 1
                self._plan_now = self._plan()
                self._path_top_now = self._path_top()
                self._set_phase("pregrasp")
                return self._move(pos + np.array([0, 0, 0.05]), open_)

        if self.phase == "pregrasp":
            target = plan.grasp + np.array([0.0, 0.0, cfg.pregrasp_height])
            rot_err = np.linalg.norm(rotation_error(down_rotation(plan.yaw), rot))
            err = target - pos
            if (np.linalg.norm(err[:2]) < cfg.grasp_tol and abs(err[2]) < cfg.reach_tol and rot_err < cfg.rot_tol) or (
                self._phase_steps > cfg.phase_timeout
            ):
                self._set_phase("descend")
            else:
                return self._move(target, open_)
        if self.phase == "descend":
            if np.linalg.norm(plan.grasp - pos) < cfg.grasp_tol or self._phase_steps > cfg.phase_timeout // 2:
                # Same goal while closing, and the integral state goes with it: far out (Panda near full
                # stretch) OSC drifts several mm off a goal it held a moment ago, and a rim grasp needs ~3 mm.
                self._set_phase("close", keep_integral=True)
            else:
                return self._move(plan.grasp, open_, fine=True)
        if self.phase == "close":
            if self._phase_steps > cfg.close_steps:
                self._set_phase("lift")
            else:
                return self._move(plan.grasp, close, fine=True)
        if self.phase == "lift":
            carry_bottom = self._carry_bottom()
            lo, _ = self._object_box()
            lift_z = max(plan.grasp[2] + cfg.lift_height, pos[2] + (carry_bottom - lo[2]))
            target = np.array([plan.grasp[0], plan.grasp[1], lift_z])
            if abs(target[2] - pos[2]) < cfg.reach_tol or self._phase_steps > cfg.phase_timeout:
                self._set_phase("carry")
            else:
                return self._move(target, close)
        if self.phase == "carry":
            target, xy_err = self._carry_hand_target(self._carry_bottom())
            if xy_err < cfg.place_tol or self._phase_steps > 2 * cfg.phase_timeout:
                self._set_phase("lower")
            else:
                return self._move(target, close)
        if self.phase == "lower":
            target, xy_err = self._carry_hand_target(self._target_surface() + cfg.release_clearance)
            if (abs(target[2] - pos[2]) < cfg.grasp_tol and xy_err < cfg.place_tol) or (
                self._phase_steps > cfg.phase_timeout
            ):
                self._set_phase("open")
                self._hold_xy = pos.copy()
            else:
                return self._move(target, close, fine=True)
        if self.phase == "open":
            if self._phase_steps > cfg.open_steps:
                self._set_phase("retreat")
            else:
                assert self._hold_xy is not None
                return self._move(self._hold_xy, open_, fine=True)
        # retreat / done: straight up, gripper open
        assert self._hold_xy is not None
        target = self._hold_xy + np.array([0.0, 0.0, cfg.retreat_height])
        if np.linalg.norm(target - pos) < cfg.reach_tol:
            self.phase = "done"
        return self._move(target, open_)


def _has_body(model: Any, name: str) -> bool:
    try:
        model.body(name)
    except KeyError:
        return False
    return True


# ---------------------------------------------------------------------------------------------- rollout
@dataclass
class ExpertEpisode:
    """One expert episode: per-step arrays are aligned (frame t = observation before action t)."""

    suite: str
    task_id: int
    init_index: int
    noise_std: float
    noise_seed: int
    success: bool
    steps: int
    states: np.ndarray = field(repr=False)  # (T, 8) observation.state
    env_states: np.ndarray = field(repr=False)  # (T, D) observation.environment_state
    actions: np.ndarray = field(repr=False)  # (T, 7) executed (noisy, clipped) actions
    next_success: np.ndarray = field(repr=False)  # (T,) success after action t
    task: str = ""


def noisy_action(action: np.ndarray, noise_std: float, rng: np.random.Generator) -> np.ndarray:
    """Expert action plus N(0, σ²) on every dimension, clipped to [−1, 1]. Always draws from ``rng`` so that the
    noise stream of an episode does not depend on σ."""
    noise = rng.standard_normal(ACTION_DIM)
    return np.clip(np.asarray(action, dtype=np.float64) + float(noise_std) * noise, -1.0, 1.0)


def run_expert_episode(
    env: LiberoEnv,
    expert: PickPlaceExpert,
    init_index: int,
    noise_std: float = 0.0,
    noise_seed: int = 0,
    on_step: Callable[[dict[str, Any], np.ndarray, bool], None] | None = None,
) -> ExpertEpisode:
    """Reset ``env`` to ``(init_index, noise_seed)`` and run the expert (with action noise σ) to success or the
    step cap. ``on_step(obs, action, next_success)`` sees every frame (e.g. to record it)."""
    obs = env.reset(init_index, noise_seed)
    expert.reset()
    states, env_states, actions, nexts = [], [], [], []
    success, done = False, False
    while not done:
        action = noisy_action(expert.act(obs), noise_std, env.rng)
        states.append(obs["observation.state"])
        env_states.append(obs["observation.environment_state"])
        actions.append(action.astype(np.float32))
        next_obs, success, done, _ = env.step(action)
        nexts.append(success)
        if on_step is not None:
            on_step(obs, action, success)
        obs = next_obs
    return ExpertEpisode(
        suite=env.suite,
        task_id=env.task_id,
        init_index=int(init_index),
        noise_std=float(noise_std),
        noise_seed=int(noise_seed),
        success=bool(success),
        steps=len(actions),
        states=np.stack(states),
        env_states=np.stack(env_states),
        actions=np.stack(actions),
        next_success=np.array(nexts, dtype=bool),
        task=env.language,
    )


__all__ = [
    "PHASES",
    "ExpertEpisode",
    "PickPlaceConfig",
    "PickPlaceExpert",
    "PickPlaceGoal",
    "UnsupportedTaskError",
    "down_rotation",
    "is_supported",
    "noisy_action",
    "rotation_error",
    "run_expert_episode",
]
