"""LIBERO tasks behind one small interface: ``reset(init_index, noise_seed) -> obs``, ``step(action) -> (obs,
success, done, info)``, observations keyed with LeRobot's feature names.

Episode identity. An episode is named by ``(suite, task_id, init_index, noise_seed)``. The initial simulator state
is the suite's own ``init_index``-th init state (50 per task, the ones every LIBERO paper evaluates on), restored
after a *hard* reset (LIBERO rebuilds the MuJoCo model from its XML, so nothing of the previous episode survives),
then ``settle_steps`` no-op steps (LeRobot's ``num_steps_wait``) let objects come to rest. LIBERO's init states hold
only joint positions and velocities; the *fixtures* (cabinet, stove, rack, ...) are re-placed at random by every
reset, by up to ~2 cm, with draws that depend on earlier resets, so stock LIBERO never replays an episode exactly.
This wrapper freezes the fixture placement made when the env is built (under a seed that names the task) and
restores it after every reset. ``noise_seed`` seeds :attr:`LiberoEnv.rng`, the generator from which callers draw
exploration noise (:func:`episode_rng`). ``tests/test_libero.py`` checks that the same name gives the same
episode whatever ran before it in the process and in another process.

Observation (a dict, LeRobot's LIBERO names)::

    "observation.state"              float32 (8,)  eef position xyz (m, world) | eef orientation as an axis-angle
                                                   vector (3, from robosuite's xyzw quaternion) | gripper finger
                                                   qpos (2) — exactly LeRobot's ``LiberoProcessorStep`` state
    "observation.environment_state"  float32 (D,)  privileged: for every movable object of the task (BDDL order)
                                                   position xyz + quaternion xyzw (7), then the joint position of
                                                   every articulated fixture joint (drawers, doors, knobs); D is
                                                   fixed per task, names in ``LiberoEnv.environment_state_names``
    "observation.images.image"       uint8 (H, W, 3)  agentview camera        } only with cameras=True; rotated by
    "observation.images.wrist_image" uint8 (H, W, 3)  robot0_eye_in_hand      } 180° (both axes flipped), i.e. upright
    "task"                           str           the task's language instruction

:func:`env_info` describes these features (for a dataset) without stepping the simulator.

Images: robosuite renders in the OpenGL convention (upside down). LeRobot's ``LiberoProcessorStep`` flips both
axes of raw env frames so that they match the HuggingFaceVLA/libero datasets; this wrapper returns frames *already
flipped*, i.e. in the orientation those datasets store and a LeRobot LIBERO policy sees after its processor. Feed
them to a policy without applying ``LiberoProcessorStep``'s flip a second time.

Action: 7-d in [−1, 1] (clipped), robosuite ``OSC_POSE`` deltas: xyz (×5 cm), axis-angle rotation in the world frame
(×0.5 rad), gripper (−1 open, +1 close). 20 Hz control.

Headless: MuJoCo's GL backend is chosen before MuJoCo is imported (``egl`` unless ``MUJOCO_GL`` is set), and
``LP_NUM_THREADS=0`` (unless set) keeps Mesa's llvmpipe on one thread, so one env process per core scales.
Camera-free mode (the default) never creates a GL context and runs ~50 steps/s on one core.
"""

from __future__ import annotations

import contextlib
import io
import os
import zlib
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from gaflow.envs.base import ActionPath, EnvInfo, Feature, check_env_options
from gaflow.observations import ENV_STATE_KEY, STATE_KEY, TASK_KEY

SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
# Step caps used by the community (LIBERO / OpenVLA / SmolVLA evaluations), counted after the settle steps.
MAX_STEPS: dict[str, int] = {
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}
CONTROL_FPS = 20
ACTION_DIM = 7
STATE_DIM = 8
IMAGE_KEY = "observation.images.image"
WRIST_IMAGE_KEY = "observation.images.wrist_image"
CAMERAS = {IMAGE_KEY: "agentview", WRIST_IMAGE_KEY: "robot0_eye_in_hand"}
DEFAULT_IMAGE_SIZE = 128
STATE_NAMES = ("eef_x", "eef_y", "eef_z", "eef_axis_angle_x", "eef_axis_angle_y", "eef_axis_angle_z",
               "gripper_qpos_left", "gripper_qpos_right")
ACTION_NAMES = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")
# robosuite OSC_POSE scales the xyz action (clipped to [−1, 1]) to a 5 cm position set-point offset per step; the
# controller approaches it within the step, so "eef + 5 cm × cumulative sum" is an approximate (upper-bound) path.
ACTION_PATH = ActionPath(STATE_KEY, (0, 1, 2), (0, 1, 2), (0.05, 0.05, 0.05), -1.0, 1.0, "m")
# LeRobot's LIBERO no-op: hold still with the gripper open.
NOOP_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float64)


def _configure_headless() -> None:
    # Must run before the first `import mujoco` / robosuite (they read these once, at import).
    try:
        from gaflow.envs.render import configure_gl_backend

        configure_gl_backend()
    except ImportError:  # pragma: no cover - render.py is optional here
        os.environ.setdefault("MUJOCO_GL", "egl")
        os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    os.environ.setdefault("LP_NUM_THREADS", "0")


_configure_headless()


@contextlib.contextmanager
def _quiet():
    # LIBERO prints "[info] Applying task order ..." on every benchmark construction.
    with contextlib.redirect_stdout(io.StringIO()):
        yield


@cache
def _benchmark(suite: str) -> Any:
    if suite not in SUITES:
        raise ValueError(f"suite must be one of {SUITES}, got {suite!r}")
    with _quiet():
        from libero.libero import benchmark

        return benchmark.get_benchmark(suite)()


@dataclass(frozen=True)
class LiberoTask:
    """One task of a suite: what is needed to build it, without building it."""

    suite: str
    task_id: int
    name: str
    language: str
    bddl_file: str


def task_count(suite: str) -> int:
    return int(_benchmark(suite).n_tasks)


def get_task(suite: str, task_id: int) -> LiberoTask:
    bench = _benchmark(suite)
    if not 0 <= int(task_id) < bench.n_tasks:
        raise ValueError(f"task_id must be in [0, {bench.n_tasks}) for {suite}, got {task_id}")
    t = bench.get_task(int(task_id))
    return LiberoTask(suite, int(task_id), t.name, t.language, bench.get_task_bddl_file_path(int(task_id)))


@cache
def init_states(suite: str, task_id: int) -> np.ndarray:
    """The suite's fixed init states of one task, (50, D) flattened MuJoCo states (time, qpos, qvel)."""
    get_task(suite, task_id)  # validates
    with _quiet():
        states = _benchmark(suite).get_task_init_states(int(task_id))
    states = np.asarray(states, dtype=np.float64)
    states.setflags(write=False)
    return states


@cache
def environment_state_names(suite: str, task_id: int) -> tuple[str, ...]:
    """The layout of one task's ``observation.environment_state`` (which objects and fixture joints the task has
    is only known once robosuite has built its model: this builds the camera-free env once per process)."""
    with LiberoEnv(suite, task_id) as env:
        return tuple(env.environment_state_names)


def env_info(suite: str = "libero_spatial", task_id: int | None = None, *, cameras: bool = False,
             image_size: int = DEFAULT_IMAGE_SIZE, environment_state_dim: int | None = None,
             **env_options: Any) -> EnvInfo:
    """What :class:`LiberoEnv` built with these options emits.

    Everything but the size D of ``observation.environment_state`` is fixed; D depends on the task's objects.
    Give it as ``environment_state_dim`` (e.g. the largest of several tasks, for a dataset that zero-pads them)
    or give ``task_id`` and it is read from the task's env (:func:`environment_state_names`, built once).
    """
    check_env_options(LiberoEnv, env_options, "libero env_info")
    if suite not in SUITES:
        raise ValueError(f"suite must be one of {SUITES}, got {suite!r}")
    if int(image_size) <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if environment_state_dim is None:
        if task_id is None:
            raise ValueError("libero env_info needs task_id or environment_state_dim (the size of "
                             "observation.environment_state depends on the task)")
        environment_state_dim = len(environment_state_names(suite, int(task_id)))
    elif task_id is not None:
        get_task(suite, task_id)  # validates
    images = tuple(Feature(key, "image", (int(image_size), int(image_size), 3), camera=cam)
                   for key, cam in CAMERAS.items()) if cameras else ()
    return EnvInfo(
        env=f"libero:{suite}",
        fps=CONTROL_FPS,
        action=Feature("action", "float32", (ACTION_DIM,), ACTION_NAMES),
        observation=(Feature(STATE_KEY, "float32", (STATE_DIM,), STATE_NAMES),
                     Feature(ENV_STATE_KEY, "float32", (int(environment_state_dim),)),
                     *images),
        robot_type="panda",
        action_path=ACTION_PATH,
    )


def episode_of_seed(seed: int, num_init_states: int = 50) -> tuple[int, int]:
    """gaflow episode seed → ``(init_index, noise_seed)``: seeds 0–49 are the init states with noise seed 0, 50–99
    the same init states with noise seed 1, ... (the seed split of :data:`gaflow.evaluation.splits.LIBERO_SPLITS`
    splits the init index)."""
    return seed % num_init_states, seed // num_init_states


def episode_rng(suite: str, task_id: int, init_index: int, noise_seed: int) -> np.random.Generator:
    """The exploration-noise generator of an episode: a pure function of its name (stable across processes:
    ``zlib.crc32`` of the suite name, not Python's salted ``hash``)."""
    return np.random.default_rng([zlib.crc32(suite.encode()), int(task_id), int(init_index), int(noise_seed)])


def quat_to_axis_angle(quat_xyzw: np.ndarray) -> np.ndarray:
    """robosuite's xyzw quaternion → axis-angle vector (3,), the formula of LeRobot's ``LiberoProcessorStep``."""
    q = np.asarray(quat_xyzw, dtype=np.float64)
    w = float(np.clip(q[3], -1.0, 1.0))
    den = np.sqrt(max(1.0 - w * w, 0.0))
    if den <= 1e-10:
        return np.zeros(3)
    return q[:3] / den * 2.0 * np.arccos(w)


@contextlib.contextmanager
def _seeded_global_numpy(seed: int):
    """Seed numpy's global generator (LIBERO samples from it) and restore the caller's state afterwards."""
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(saved)


class LiberoEnv:
    """One LIBERO task. See the module docstring for the observation, action and episode-identity contracts.

    >>> env = LiberoEnv("libero_spatial", 0)            # doctest: +SKIP
    >>> obs = env.reset(init_index=3)                    # doctest: +SKIP
    >>> obs, success, done, info = env.step(np.zeros(7))  # doctest: +SKIP
    """

    def __init__(
        self,
        suite: str,
        task_id: int,
        cameras: bool = False,
        image_size: int = DEFAULT_IMAGE_SIZE,
        max_steps: int | None = None,
        settle_steps: int = 10,
    ) -> None:
        self.task = get_task(suite, task_id)
        self.suite, self.task_id = suite, int(task_id)
        self.cameras = bool(cameras)
        if int(image_size) <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.image_size = int(image_size)
        self.max_steps = MAX_STEPS[suite] if max_steps is None else int(max_steps)
        if self.max_steps <= 0:
            raise ValueError(f"max_steps must be positive, got {max_steps}")
        if int(settle_steps) < 0:
            raise ValueError(f"settle_steps must be >= 0, got {settle_steps}")
        self.settle_steps = int(settle_steps)
        self.language = self.task.language
        self.action_path = ACTION_PATH  # approximate eef path of a chunk (objective terms, projection)
        self._init_states = init_states(suite, self.task_id)

        from libero.libero.envs.env_wrapper import ControlEnv

        kwargs: dict[str, Any] = dict(
            bddl_file_name=self.task.bddl_file,
            use_camera_obs=self.cameras,
            has_renderer=False,
            has_offscreen_renderer=self.cameras,
            camera_names=list(CAMERAS.values()),
            camera_heights=self.image_size,
            camera_widths=self.image_size,
            # Hard reset rebuilds the model on every reset: bit-exact replays (soft resets drift).
            hard_reset=True,
            # robosuite raises when stepped past its horizon; ours ends episodes first.
            horizon=self.settle_steps + self.max_steps + 10,
        )
        # LIBERO places the fixtures (cabinet, stove, rack, ...) by writing model.body_pos during every reset,
        # from numpy's global generator, with results that also depend on earlier resets; the init states hold
        # only qpos/qvel, so fixtures would land up to ~2 cm differently each episode. Freeze the placement made
        # at construction (under a seed that names the task) and restore it after every reset.
        with _seeded_global_numpy(zlib.crc32(f"{suite}/{self.task_id}".encode()) % (2**31 - 1)), _quiet():
            self.raw = ControlEnv(**kwargs)
        self._fixture_poses = self._read_fixture_poses()
        self.rng = episode_rng(suite, self.task_id, 0, 0)
        self.init_index: int | None = None
        self.noise_seed: int | None = None
        self._steps = 0
        self._done = True
        self._layout_cache: tuple[list[str], list[tuple[str, Any]]] | None = None

    # ------------------------------------------------------------------ properties
    @property
    def num_init_states(self) -> int:
        return int(self._init_states.shape[0])

    @property
    def problem(self) -> Any:
        """LIBERO's BDDL problem env (robosuite env): ``parsed_problem``, ``objects_dict``, ``sim`` ..."""
        return self.raw.env

    @property
    def sim(self) -> Any:
        return self.raw.env.sim

    @property
    def steps(self) -> int:
        """Policy steps taken in this episode (settle steps excluded)."""
        return self._steps

    @property
    def environment_state_names(self) -> list[str]:
        return list(self._layout()[0])

    # ------------------------------------------------------------------ episode
    def reset(self, init_index: int, noise_seed: int | None = None) -> dict[str, Any]:
        """Start episode ``(task, init_index, noise_seed)``: hard reset, restore the init state, settle.

        Called with one number (as gaflow's rollouts call every env: ``reset(seed)``), it is an episode seed:
        init state ``seed mod 50``, noise seed ``seed // 50`` (:func:`episode_of_seed`)."""
        n = self.num_init_states
        if noise_seed is None:
            if int(init_index) < 0:
                raise ValueError(f"episode seed must be >= 0, got {init_index}")
            init_index, noise_seed = episode_of_seed(int(init_index), n)
        if not 0 <= int(init_index) < n:
            raise ValueError(f"init_index must be in [0, {n}) for {self.suite} task {self.task_id}, got {init_index}")
        self.init_index, self.noise_seed = int(init_index), int(noise_seed)
        self.rng = episode_rng(self.suite, self.task_id, self.init_index, self.noise_seed)
        # The hard reset's placement sampler draws from numpy's global generator; what it places is then
        # overwritten (objects by the init state, fixtures by the frozen placement), but seed it anyway.
        with _seeded_global_numpy(int(self.rng.integers(2**31 - 1))), _quiet():
            self.raw.reset()
        self._layout_cache = None  # hard reset rebuilt the model: ids may differ
        self._write_fixture_poses(self._fixture_poses)
        raw = self.raw.set_init_state(self._init_states[self.init_index])  # also runs mj_forward
        for _ in range(self.settle_steps):
            raw, _, _, _ = self.raw.step(NOOP_ACTION)
        self._steps = 0
        self._done = False
        return self._observation(raw)

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], bool, bool, dict[str, Any]]:
        """Apply one 7-d action; ``done`` is success or the step cap. Returns ``(obs, success, done, info)``."""
        if self._done:
            raise RuntimeError("episode is over (success or step cap): call reset() before step()")
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (ACTION_DIM,):
            raise ValueError(f"action must have shape ({ACTION_DIM},), got {np.shape(action)}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action must be finite, got {a}")
        raw, _, _, _ = self.raw.step(np.clip(a, -1.0, 1.0))
        self._steps += 1
        success = bool(self.raw.check_success())
        truncated = not success and self._steps >= self.max_steps
        self._done = success or truncated
        info = {"steps": self._steps, "is_success": success, "truncated": truncated}
        return self._observation(raw), success, self._done, info

    def close(self) -> None:
        if getattr(self, "raw", None) is not None and hasattr(self.raw, "env"):
            self.raw.close()

    def __enter__(self) -> LiberoEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ fixtures
    def _fixture_bodies(self) -> dict[str, int]:
        env = self.problem
        return {name: env.obj_body_id[name] for name in env.fixtures_dict}

    def _read_fixture_poses(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        model = self.sim.model._model
        return {n: (np.array(model.body_pos[b]), np.array(model.body_quat[b])) for n, b in self._fixture_bodies().items()}

    def _write_fixture_poses(self, poses: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        model = self.sim.model._model
        for name, body in self._fixture_bodies().items():
            model.body_pos[body], model.body_quat[body] = poses[name]

    # ------------------------------------------------------------------ observation
    def _layout(self) -> tuple[list[str], list[tuple[str, Any]]]:
        if self._layout_cache is None:
            env, sim = self.problem, self.sim
            names: list[str] = []
            readers: list[tuple[str, Any]] = []
            for obj in env.objects_dict:
                names += [f"{obj}.pos.{c}" for c in "xyz"] + [f"{obj}.quat.{c}" for c in "xyzw"]
                readers.append(("body", env.obj_body_id[obj]))
            for fix, fobj in env.fixtures_dict.items():
                for joint in getattr(fobj, "joints", []) or []:
                    names.append(f"{fix}.{joint}")
                    readers.append(("joint", sim.model.get_joint_qpos_addr(joint)))
            self._layout_cache = (names, readers)
        return self._layout_cache

    def environment_state(self) -> np.ndarray:
        """Privileged object poses and fixture joints, float32 (D,), layout in ``environment_state_names``."""
        data = self.sim.data
        parts: list[np.ndarray] = []
        for kind, ref in self._layout()[1]:
            if kind == "body":
                wxyz = np.asarray(data.body_xquat[ref])
                parts += [np.asarray(data.body_xpos[ref]), wxyz[[1, 2, 3, 0]]]
            else:
                parts.append(np.atleast_1d(np.asarray(data.qpos[ref])))
        return np.concatenate(parts).astype(np.float32)

    def _observation(self, raw: dict[str, Any]) -> dict[str, Any]:
        state = np.concatenate(
            [raw["robot0_eef_pos"], quat_to_axis_angle(raw["robot0_eef_quat"]), raw["robot0_gripper_qpos"]]
        ).astype(np.float32)
        obs: dict[str, Any] = {
            STATE_KEY: state,
            ENV_STATE_KEY: self.environment_state(),
            TASK_KEY: self.language,
        }
        if self.cameras:
            for key, cam in CAMERAS.items():
                obs[key] = np.ascontiguousarray(raw[f"{cam}_image"][::-1, ::-1])
        return obs


__all__ = [
    "ACTION_DIM",
    "CAMERAS",
    "CONTROL_FPS",
    "IMAGE_KEY",
    "MAX_STEPS",
    "NOOP_ACTION",
    "STATE_DIM",
    "SUITES",
    "WRIST_IMAGE_KEY",
    "LiberoEnv",
    "LiberoTask",
    "env_info",
    "environment_state_names",
    "episode_rng",
    "get_task",
    "init_states",
    "quat_to_axis_angle",
    "task_count",
]
