"""MetaWorld v3 tasks behind one small interface: ``reset(seed) -> obs``, ``step(action) -> (obs, success, done,
info)``, observations keyed with LeRobot's feature names (see :mod:`gaflow.observations`).

Episode identity. An episode is named by ``(task, seed)``. Its initial state — object and goal placement *and*
the simulator state — is a deterministic function of that pair, independent of the process, of earlier episodes
and of Python's hash randomisation: :func:`placement_seed` hashes ``(task, seed)`` with SHA-256 into the seed of
the env's own placement generator (MetaWorld's ``seeded_rand_vec`` path, which also serves its rejection loops,
e.g. pick-place redraws a goal too close to the puck), and the simulator starts each reset from the state the env
was built in before MetaWorld's reset rebuilds it (``mj_resetData`` and 50 hand-settling steps; MetaWorld's reset
alone leaves a trace of the previous episode in the reset image, see ``MetaWorldEnv._restore_built_sim``).
Placements are drawn from each task's continuous reset space, not from MT1's 50 fixed benchmark placements, so any
integer seed is a fresh episode.
Paired evaluation (same episode, different guidance) relies on this; ``tests/test_metaworld_env.py`` checks it
across processes.

Control: 4-d actions in [−1, 1] (hand xyz displacement ×1 cm, gripper effort), ``frame_skip`` 5 × 2.5 ms =
12.5 ms per step, i.e. :data:`CONTROL_FPS` = 80 Hz; :data:`ACTION_PATH` states that map (hand target = hand
position + 1 cm × cumulative sum of the clipped xyz actions). ``observation.state`` is the hand position (3) and the
gripper opening (1, 0 closed … 1 open); ``observation.environment_state`` is MetaWorld's 39-d vector (hand,
gripper, object poses, the previous frame of both, goal position). :func:`env_info` describes all of this
without building a simulator. MetaWorld's scripted expert is :mod:`gaflow.experts.metaworld`.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

import numpy as np

from gaflow.envs.base import ActionPath, EnvInfo, Feature, check_env_options
from gaflow.envs.render import configure_gl_backend, import_mujoco
from gaflow.observations import ENV_STATE_KEY, IMAGE_KEY, STATE_KEY, TASK_KEY

configure_gl_backend()  # must precede the first `import mujoco` (metaworld imports it)

CONTROL_FPS = 80  # MetaWorld: frame_skip 5 × timestep 0.0025 s; also its metadata["render_fps"]
MAX_PATH_LENGTH = 500  # MetaWorld raises when stepped past this
STATE_DIM = 4  # hand xyz + gripper opening = environment_state[:4]
ENV_STATE_DIM = 39  # MetaWorld's observation vector (goal-observable)
ACTION_DIM = 4
DEFAULT_IMAGE_SIZE = 84
# MetaWorld's set_xyz_action: clip the action to [−1, 1] and move the hand's mocap target by action·action_scale
# (1/100 m) per step; the hand follows the target through a weld constraint (a lag of a few mm while moving).
ACTION_PATH = ActionPath(STATE_KEY, (0, 1, 2), (0, 1, 2), (0.01, 0.01, 0.01), -1.0, 1.0, "m")

# Default camera. MetaWorld's "corner4" (the view LeRobot's MetaWorld env and TD-MPC2 use: their "corner2" moved
# to corner4's position) looks at the table from the front-right, close enough that the puck, the goal marker and
# the gripper stay visible at 84 px for all the manipulation tasks. "corner" is farther and shows more of the
# robot base than of the work space; "topview" hides heights; "gripperPOV"/"behindGripper" lose the goal.
DEFAULT_CAMERA = "corner4"
CAMERAS = ("corner", "corner2", "corner3", "corner4", "topview", "behindGripper", "gripperPOV")

# One natural-language instruction per v3 task (the "task" string a language-conditioned policy reads).
TASK_DESCRIPTIONS: dict[str, str] = {
    "assembly": "pick up the nut and place it onto the peg",
    "basketball": "pick up the ball and dunk it into the basket",
    "bin-picking": "pick the puck from one bin and place it into the other bin",
    "box-close": "pick up the lid and close the box with it",
    "button-press-topdown": "press the button from the top",
    "button-press-topdown-wall": "reach over the wall and press the button from the top",
    "button-press": "press the button",
    "button-press-wall": "reach around the wall and press the button",
    "coffee-button": "push the button on the coffee machine",
    "coffee-pull": "pull the mug out from under the coffee machine",
    "coffee-push": "push the mug under the coffee machine",
    "dial-turn": "rotate the dial 180 degrees",
    "disassemble": "pick the nut off the peg",
    "door-close": "close the door",
    "door-lock": "lock the door by turning the lock clockwise",
    "door-open": "open the door",
    "door-unlock": "unlock the door by turning the lock counter-clockwise",
    "drawer-close": "push the drawer closed",
    "drawer-open": "pull the drawer open",
    "faucet-close": "turn the faucet handle clockwise",
    "faucet-open": "turn the faucet handle counter-clockwise",
    "hammer": "pick up the hammer and hammer the nail into the wall",
    "hand-insert": "insert the gripper into the hole",
    "handle-press-side": "press the handle down from the side",
    "handle-press": "press the handle down",
    "handle-pull-side": "pull the handle up from the side",
    "handle-pull": "pull the handle up",
    "lever-pull": "pull the lever up",
    "peg-insert-side": "pick up the peg and insert it sideways into the hole",
    "peg-unplug-side": "unplug the peg sideways",
    "pick-out-of-hole": "pick the puck up out of the hole",
    "pick-place": "pick up the puck and place it at the goal",
    "pick-place-wall": "pick up the puck, lift it over the wall and place it at the goal",
    "plate-slide": "slide the plate into the cabinet",
    "plate-slide-back": "slide the plate out of the cabinet",
    "plate-slide-back-side": "slide the plate out of the cabinet sideways",
    "plate-slide-side": "slide the plate into the cabinet sideways",
    "push": "push the puck to the goal",
    "push-back": "pull the puck back to the goal",
    "push-wall": "push the puck around the wall to the goal",
    "reach": "move the gripper to the goal",
    "reach-wall": "move the gripper over the wall to the goal",
    "shelf-place": "pick up the puck and place it on the shelf",
    "soccer": "push the ball into the goal",
    "stick-pull": "grasp the stick and pull the box with it",
    "stick-push": "grasp the stick and push the box with it",
    "sweep": "sweep the puck off the table",
    "sweep-into": "sweep the puck into the hole",
    "window-close": "slide the window closed",
    "window-open": "slide the window open",
}

# Default step caps: the scripted expert's slowest successful episode at σ=0.3 (8 episodes, seeds 1000–1007),
# rounded up to a multiple of 50 and kept within 150–250 (docs/envs.md has the measured lengths). Tasks not
# measured get FALLBACK_MAX_STEPS.
DEFAULT_MAX_STEPS: dict[str, int] = {
    "assembly": 250, "box-close": 250, "coffee-push": 150, "coffee-pull": 150, "disassemble": 250,
    "hammer": 150, "hand-insert": 150, "peg-insert-side": 250, "pick-place": 150, "push": 150,
    "push-wall": 150, "shelf-place": 150, "soccer": 150, "stick-pull": 200, "stick-push": 150, "sweep": 150,
    "reach": 150, "button-press": 150, "drawer-open": 150, "door-open": 150,
}
FALLBACK_MAX_STEPS = 200


def task_name(task: str) -> str:
    """Canonical short name: ``"push-v3"`` → ``"push"``; raises on unknown tasks (listing the known ones)."""
    name = task.strip().removesuffix("-goal-observable").removesuffix("-v3")
    if name not in TASK_DESCRIPTIONS:
        raise ValueError(f"unknown MetaWorld v3 task {task!r}; known: {', '.join(sorted(TASK_DESCRIPTIONS))}")
    return name


def default_max_steps(task: str) -> int:
    return DEFAULT_MAX_STEPS.get(task_name(task), FALLBACK_MAX_STEPS)


def placement_seed(task: str, seed: int) -> int:
    """Stable 63-bit seed of the placement generator for episode ``(task, seed)`` (SHA-256, not ``hash()``)."""
    digest = hashlib.sha256(f"gaflow/metaworld-v3/{task_name(task)}/{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def env_info(task: str | None = None, *, image_size: int = DEFAULT_IMAGE_SIZE, camera: str = DEFAULT_CAMERA,
             render: bool = True, **env_options: Any) -> EnvInfo:
    """What :class:`MetaWorldEnv` built with these options emits (no simulator is built). The features are the
    same for every task; ``task`` is only checked. Other constructor options (``max_steps``, ...) are accepted
    and do not change the features."""
    check_env_options(MetaWorldEnv, env_options, "metaworld env_info")
    if task is not None:
        task_name(task)
    if int(image_size) < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    if camera not in CAMERAS:
        raise ValueError(f"camera {camera!r} unknown; MetaWorld cameras: {', '.join(CAMERAS)}")
    image = (Feature(IMAGE_KEY, "image", (int(image_size), int(image_size), 3), camera=camera),) if render else ()
    return EnvInfo(
        env="metaworld",
        fps=CONTROL_FPS,
        action=Feature("action", "float32", (ACTION_DIM,), ("dx", "dy", "dz", "gripper")),
        observation=(*image,
                     Feature(STATE_KEY, "float32", (STATE_DIM,), ("hand_x", "hand_y", "hand_z", "gripper")),
                     Feature(ENV_STATE_KEY, "float32", (ENV_STATE_DIM,))),
        robot_type="sawyer",
        action_path=ACTION_PATH,
    )


class MetaWorldEnv:
    """One MetaWorld v3 task with deterministic ``(task, seed)`` episodes and LeRobot-keyed observations.

    Args:
        task: ``"push"`` or ``"push-v3"`` (see :data:`TASK_DESCRIPTIONS` for all 50).
        image_size: side of the square RGB image.
        camera: a MetaWorld camera name (:data:`CAMERAS`); default :data:`DEFAULT_CAMERA`.
        max_steps: step cap per episode (≤ 500); default :func:`default_max_steps`.
        render: render ``observation.image``; ``False`` leaves it out (state-only, ~20× faster).
        terminate_on_success: ``done`` turns true at the first success (else only at ``max_steps``).
        fast_render: llvmpipe-friendly settings (no MSAA/shadows/reflections/skybox).

    ``step`` returns ``(obs, success, done, info)``: ``success`` is MetaWorld's success flag after this step;
    ``done`` is true at the step cap, and at success when ``terminate_on_success``; ``info`` holds ``success``,
    ``truncated``, ``step``, ``reward`` and MetaWorld's own info. Stepping past ``max_steps`` raises.

    >>> env = MetaWorldEnv("push", image_size=64)          # doctest: +SKIP
    >>> obs = env.reset(seed=3)                             # doctest: +SKIP
    >>> obs, success, done, info = env.step(np.zeros(4))    # doctest: +SKIP
    """

    def __init__(
        self,
        task: str,
        image_size: int = DEFAULT_IMAGE_SIZE,
        camera: str = DEFAULT_CAMERA,
        max_steps: int | None = None,
        render: bool = True,
        terminate_on_success: bool = True,
        fast_render: bool = True,
    ) -> None:
        mujoco = import_mujoco()  # a missing GL library fails here already; this names it
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        self.task = task_name(task)
        self.env_name = f"{self.task}-v3"
        self.description = TASK_DESCRIPTIONS[self.task]
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {image_size}")
        if camera not in CAMERAS:
            raise ValueError(f"camera {camera!r} unknown; MetaWorld cameras: {', '.join(CAMERAS)}")
        self.image_size, self.camera = int(image_size), camera
        self.max_steps = default_max_steps(self.task) if max_steps is None else int(max_steps)
        if not 1 <= self.max_steps <= MAX_PATH_LENGTH:
            raise ValueError(f"max_steps must be in [1, {MAX_PATH_LENGTH}] (MetaWorld's limit), got {max_steps}")
        self.render_images = bool(render)
        self.terminate_on_success = bool(terminate_on_success)
        self.fast_render = bool(fast_render)
        self.fps = CONTROL_FPS
        self.action_path = ACTION_PATH  # the hand's target path of a chunk (objective terms, projection)

        env = ALL_V3_ENVIRONMENTS[self.env_name]()  # render_mode=None: gymnasium never opens its own renderer
        # The goal-observable MT setting: goal position in obs[36:39] (MetaWorld's MT1/MT10/MT50 use it too).
        env._partially_observable = False
        if "sawyer_observation_space" in env.__dict__:
            del env.sawyer_observation_space  # cached_property computed for the goal-hidden space
        env._set_task_called = True
        # Draw placements from env.np_random, which reset() reseeds from (task, seed): see the module docstring.
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True
        self._env = env
        self._mujoco = mujoco
        # The simulator as built, restored before every reset (see reset()): the integration state of MjData
        # (qpos, qvel, mocap, warm start, ...) and the model fields MetaWorld's reset_model writes (body and site
        # positions: goal markers, boxes, walls).
        self._built_state = np.empty(mujoco.mj_stateSize(env.model, mujoco.mjtState.mjSTATE_INTEGRATION))
        mujoco.mj_getState(env.model, env.data, self._built_state, mujoco.mjtState.mjSTATE_INTEGRATION)
        self._built_body_pos = env.model.body_pos.copy()
        self._built_site_pos = env.model.site_pos.copy()
        self._renderer: Any = None
        self._raw_obs: np.ndarray | None = None
        self._last_obs: dict[str, Any] | None = None
        self._steps = 0
        self._success = False
        self.seed: int | None = None

    # -- episode ---------------------------------------------------------------------------------------------
    def reset(self, seed: int) -> dict[str, Any]:
        """Start episode ``(task, seed)``; its initial state depends on nothing else."""
        self.seed = int(seed)
        self._restore_built_sim()
        self._env.seed(placement_seed(self.task, self.seed))
        raw, _ = self._env.reset()
        self._steps = 0
        self._success = False
        return self._observe(raw)

    def _restore_built_sim(self) -> None:
        """Put the simulator back into the state it was built in, so that a reset depends on nothing earlier.

        Why: MetaWorld's ``reset`` runs the task's ``reset_model`` twice, the first time *before* ``mj_resetData``,
        i.e. from the previous episode's end state. That first pass draws a goal (discarded by the second pass)
        whose height some tasks read from the object (push: the puck's COM after 50 hand-settling steps), writes
        it to the goal site, and the second pass's last ``mj_forward`` runs before it moves the site to the real
        goal — so the reset frame draws the goal marker at the first pass's goal, whose height depended on where
        the previous episode left the object (mm, or 0.6 m below the table after the puck fell off). Running
        the first pass from the built state makes that frame a function of ``(task, seed)``, exactly a fresh
        env's (so episodes recorded with fresh envs are unchanged).
        """
        mujoco, model, data = self._mujoco, self._env.model, self._env.data
        model.body_pos[:] = self._built_body_pos
        model.site_pos[:] = self._built_site_pos
        mujoco.mj_setState(model, data, self._built_state, mujoco.mjtState.mjSTATE_INTEGRATION)
        mujoco.mj_forward(model, data)  # derived quantities as after MetaWorld's constructor (which forwards too)

    def step(self, action: Any) -> tuple[dict[str, Any], bool, bool, dict[str, Any]]:
        if self._raw_obs is None:
            raise RuntimeError("call reset(seed) before step()")
        if self._steps >= self.max_steps:
            raise RuntimeError(f"episode ({self.task}, seed {self.seed}) reached max_steps={self.max_steps}; "
                               "call reset(seed)")
        a = np.asarray(action, dtype=np.float32).reshape(-1)
        if a.shape != (4,):
            raise ValueError(f"action must have 4 entries (dx, dy, dz, gripper), got shape {np.shape(action)}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action has non-finite entries: {a}")
        a = np.clip(a, -1.0, 1.0)
        raw, reward, _terminated, _truncated, mw_info = self._env.step(a)
        self._steps += 1
        success = bool(mw_info.get("success", 0.0) >= 1.0)
        self._success |= success
        truncated = self._steps >= self.max_steps
        done = truncated or (success and self.terminate_on_success)
        info = dict(mw_info)
        info.update(success=success, truncated=truncated, step=self._steps, reward=float(reward), action=a)
        return self._observe(raw), success, done, info

    @property
    def steps(self) -> int:
        return self._steps

    @property
    def ever_succeeded(self) -> bool:
        return self._success

    @property
    def raw_observation(self) -> np.ndarray:
        """MetaWorld's float64 observation vector after the latest reset/step (``observation.environment_state``
        is its float32 copy); scripted experts read it so that their rollouts are exactly reproducible."""
        if self._raw_obs is None:
            raise RuntimeError("call reset(seed) first")
        return self._raw_obs

    @property
    def last_observation(self) -> dict[str, Any] | None:
        """The observation dict returned by the latest reset/step (``None`` before the first reset)."""
        return self._last_obs

    # -- observation -----------------------------------------------------------------------------------------
    def _observe(self, raw: np.ndarray) -> dict[str, Any]:
        self._raw_obs = np.asarray(raw, dtype=np.float64).copy()
        obs: dict[str, Any] = {}
        if self.render_images:
            obs[IMAGE_KEY] = self.render()
        obs[STATE_KEY] = self._raw_obs[:STATE_DIM].astype(np.float32)
        obs[ENV_STATE_KEY] = self._raw_obs.astype(np.float32)
        obs[TASK_KEY] = self.description
        self._last_obs = obs
        return obs

    def render(self) -> np.ndarray:
        """Current frame, uint8 (H, W, 3), upright."""
        if self._renderer is None:
            from gaflow.envs.render import OffscreenRenderer

            self._renderer = OffscreenRenderer(self._env.model, self._env.data, self.camera, self.image_size,
                                               self.image_size, fast=self.fast_render)
        return self._renderer.render()

    def sim_state(self) -> dict[str, np.ndarray]:
        """Copies of the simulator state (qpos, qvel, mocap, act) — for checking episode determinism."""
        d = self._env.data
        return {"qpos": d.qpos.copy(), "qvel": d.qvel.copy(), "mocap_pos": d.mocap_pos.copy(),
                "mocap_quat": d.mocap_quat.copy(), "act": d.act.copy(), "ctrl": d.ctrl.copy()}

    @property
    def unwrapped(self) -> Any:
        """The MetaWorld env underneath (its API is not gaflow's; prefer this wrapper's methods)."""
        return self._env

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self._env.close()

    def __enter__(self) -> MetaWorldEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"MetaWorldEnv(task={self.task!r}, image_size={self.image_size}, camera={self.camera!r}, "
                f"max_steps={self.max_steps}, render={self.render_images})")


def measure_speed(task: str = "push", image_size: int = 84, camera: str = DEFAULT_CAMERA, steps: int = 300,
                  render: bool = True, seed: int = 0, fast_render: bool = True) -> float:
    """Bare env loop with uniform random actions; returns steps/s (resets included in the time)."""
    env = MetaWorldEnv(task, image_size=image_size, camera=camera, render=render, terminate_on_success=False,
                       fast_render=fast_render)
    rng = np.random.default_rng(seed)
    env.reset(seed)  # first render (GL context) outside the timing
    t = time.perf_counter()
    for _ in range(steps):
        if env.steps >= env.max_steps:
            env.reset(seed)
        env.step(rng.uniform(-1, 1, 4))
    rate = steps / (time.perf_counter() - t)
    env.close()
    return rate


def _main() -> None:
    import argparse

    p = argparse.ArgumentParser(description="MetaWorld env speed (bare loop, random actions)")
    p.add_argument("--task", default="push")
    p.add_argument("--image-size", type=int, default=84)
    p.add_argument("--camera", default=DEFAULT_CAMERA)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--no-render", action="store_true")
    p.add_argument("--default-render-settings", action="store_true", help="keep MSAA/shadows/reflections")
    a = p.parse_args()
    rate = measure_speed(a.task, a.image_size, a.camera, a.steps, render=not a.no_render,
                         fast_render=not a.default_render_settings)
    print(f"{a.task} camera={a.camera} image={a.image_size} render={not a.no_render} "
          f"fast_render={not a.default_render_settings} MUJOCO_GL={os.environ.get('MUJOCO_GL')}: {rate:.1f} steps/s")


if __name__ == "__main__":
    _main()
