"""The guided policy service both endpoints call: one loaded :class:`~gaflow.runtime.GuidedRuntime`, an allow-list
of named guidance configs, one session per client connection, and one inference worker.

* **Configs.** The server is started with named guidance configs (``{"locked": {...}, "strong": {...}}``); the
  name ``"off"`` is always the unguided base policy. A request picks a config *by name* from this allow-list — a
  file path from the network is never opened: names are looked up in a dict built at start.
* **Sessions.** Each connection is a :class:`Session` with its own policy-noise stream, seeded like the
  in-process runtime's episode stream (:func:`~gaflow.runtime.episode_noise_seed` ``(episode, noise_seed)``), so a
  client that sends the observations of episode ``s`` gets, bit for bit, the chunks ``run_episode(env, runtime,
  seed=s)`` computes. The stream belongs to the session, not to a config: chunk ``k`` draws noise ``k`` whichever
  config the request chose, exactly as the arms of an evaluation share noise.
* **Per-request control** rides in the observation under :data:`CONTROL_KEY` (:class:`RequestControl`):
  ``{"gaflow": {"config": "strong", "strength": 0.3}}``, ``{"gaflow": {"guidance": False}}``,
  ``{"gaflow": {"episode": 7}}`` (start episode 7's noise stream before this chunk).
* **One worker thread** runs every inference (the policy, its LeRobot hook and its text cache are shared and not
  thread-safe; on a CPU box parallel forward passes only contend for the same cores). With ``max_batch > 1`` it
  stacks requests already waiting for the same config into one policy call (never waiting for more); rows then
  see batched kernels, so a served chunk is reproducible but no longer bit-identical to a batch-of-one call.

Errors a client caused (:class:`RequestError`: a bad control, an observation that fails the schema) are raised
before anything is queued; errors inside the policy come back on the request's future. Neither stops the worker.
"""

from __future__ import annotations

import itertools
import math
import queue
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gaflow.guidance.config import GuidanceConfig
from gaflow.runtime import GuidedRuntime, episode_noise_seed
from gaflow.serving.schema import ObservationError, ObservationSchema

OFF = "off"  # reserved config name: the unguided base policy
CONTROL_KEY = "gaflow"  # observation key that carries per-request control
MAX_SEED = 2**63 - 1
MAX_STRENGTH = 1e4  # far beyond any useful ρ or scale; bounds what a request can ask for
_CONFIG_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_SESSION_RUNTIMES = 8  # configs (name, strength) a session keeps built; the least recently used is dropped


class RequestError(ValueError):
    """A request the server refuses (bad control, bad observation, too many sessions); it keeps serving."""


class ServiceClosed(RuntimeError):
    """The service is shutting down and takes no new requests."""


@dataclass(frozen=True)
class RequestControl:
    """What one request asks for beyond its observation (all optional; absent = the server's defaults)."""

    config: str | None = None  # a name from the server's allow-list
    guidance: bool | None = None  # False: the unguided base policy for this request
    strength: float | None = None  # replaces the config's ``relative`` (ρ) if it sets one, else its ``scale``
    episode: int | None = None  # start episode ``episode``'s noise stream before this request

    @classmethod
    def parse(cls, raw: Any) -> RequestControl:
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise RequestError(f"{CONTROL_KEY!r} must be a map such as {{'config': 'locked'}}, got {type(raw).__name__}")
        names = {"config", "guidance", "strength", "episode"}
        unknown = sorted(str(k) for k in raw if k not in names)
        if unknown:
            raise RequestError(f"{CONTROL_KEY!r}: unknown field(s) {', '.join(map(repr, unknown))}; "
                               f"known: {', '.join(sorted(names))}")
        config, guidance = raw.get("config"), raw.get("guidance")
        strength, episode = raw.get("strength"), raw.get("episode")
        if config is not None and not isinstance(config, str):
            raise RequestError(f"{CONTROL_KEY}.config must be a config name (a string), got {type(config).__name__}")
        if guidance is not None and not isinstance(guidance, (bool, np.bool_)):
            raise RequestError(f"{CONTROL_KEY}.guidance must be true or false, got {guidance!r}")
        if strength is not None:
            if isinstance(strength, (bool, np.bool_)) or not isinstance(strength, (int, float, np.integer, np.floating)):
                raise RequestError(f"{CONTROL_KEY}.strength must be a number, got {type(strength).__name__}")
            strength = float(strength)
            if not math.isfinite(strength) or not 0.0 <= strength <= MAX_STRENGTH:
                raise RequestError(f"{CONTROL_KEY}.strength must be finite and in [0, {MAX_STRENGTH:g}], got {strength}")
        if episode is not None:
            if isinstance(episode, (bool, np.bool_)) or not isinstance(episode, (int, np.integer)):
                raise RequestError(f"{CONTROL_KEY}.episode must be an integer seed, got {type(episode).__name__}")
            if not 0 <= int(episode) <= MAX_SEED:
                raise RequestError(f"{CONTROL_KEY}.episode must be in [0, 2^63 - 1], got {episode}")
            episode = int(episode)
        return cls(config, None if guidance is None else bool(guidance), strength, episode)


def check_seed(seed: Any, what: str = "seed") -> int:
    try:
        value = int(seed)
    except (TypeError, ValueError):
        raise RequestError(f"{what} must be an integer, got {seed!r}") from None
    if not 0 <= value <= MAX_SEED or (isinstance(seed, float) and seed != value):
        raise RequestError(f"{what} must be an integer in [0, 2^63 - 1], got {seed!r}")
    return value


class Session:
    """One client's state: its episode, its policy-noise stream, and the runtimes of the configs it used."""

    def __init__(self, service: GuidedPolicyService, session_id: int, episode: int) -> None:
        self.service, self.id = service, session_id
        self._runtimes: OrderedDict[tuple, GuidedRuntime] = OrderedDict()
        self.start_episode(episode)

    def start_episode(self, episode: int) -> None:
        """Restart the noise stream at episode ``episode`` (worker thread, or before the session is shared)."""
        self.episode, self.chunk_index = int(episode), 0
        self._generator = torch.Generator().manual_seed(episode_noise_seed(self.episode, self.service.noise_seed))
        for rt in self._runtimes.values():
            rt.start_episode(self.episode)  # guidance controls (e.g. the random control) restart with the episode

    def runtime(self, key: tuple, config: dict | None) -> GuidedRuntime:
        """The runtime of ``config`` for this session (built once over the service's loaded models)."""
        rt = self._runtimes.get(key)
        if rt is None:
            rt = self.service.runtime.with_guidance(config)
            rt.start_episode(self.episode)
            self._runtimes[key] = rt
            while len(self._runtimes) > _SESSION_RUNTIMES:
                self._runtimes.popitem(last=False)
        self._runtimes.move_to_end(key)
        return rt

    def draw_noise(self, runtime: GuidedRuntime) -> torch.Tensor:
        """This chunk's initial noise ``(1, N, H, padded_dim)``: the draw ``GuidedRuntime`` makes for one row of an
        episode stream (tests/test_serving.py pins served chunks to ``run_episode``'s bit for bit)."""
        spec = runtime.policy.spec
        shape = (1, runtime.sampler.num_candidates, spec.chunk_len, spec.padded_dim)
        return torch.randn(shape, generator=self._generator)


@dataclass
class _Job:
    session: Session
    kind: str  # "env": env observation dicts (runtime.infer); "batch": a policy input batch (runtime.infer_batch)
    observation: Any
    control: RequestControl
    key: tuple  # (config name, strength): jobs with equal keys may share a policy call
    config: dict | None
    future: Future = field(default_factory=Future)
    submitted: float = field(default_factory=time.perf_counter)


class GuidedPolicyService:
    """Serve ``runtime``'s policy under named guidance configs; see the module docstring.

    >>> from gaflow.runtime import GuidedRuntime, RuntimeSpec
    >>> service = GuidedPolicyService(GuidedRuntime.from_spec(RuntimeSpec(policy="toy:default")))
    >>> session = service.open_session(seed=3)
    >>> out = service.infer(session, service.schema.example())
    >>> out["actions"].shape, out["guidance"]["config"]
    ((6, 2), 'off')
    >>> service.close()
    """

    def __init__(self, runtime: GuidedRuntime, configs: Mapping[str, Mapping | GuidanceConfig | None] | None = None,
                 default_config: str | None = None, *, name: str = "", default_seed: int = 0, max_batch: int = 1,
                 max_sessions: int = 64) -> None:
        if max_batch < 1 or max_sessions < 1:
            raise ValueError(f"max_batch and max_sessions must be >= 1, got {max_batch} and {max_sessions}")
        self.runtime, self.name = runtime, name or getattr(runtime.spec, "policy", type(runtime.policy).__name__)
        self.noise_seed = runtime.noise_seed
        self.configs: dict[str, dict | None] = {OFF: None}
        for cname, cfg in (configs or {}).items():
            if cname == OFF or not _CONFIG_NAME.match(cname):
                raise ValueError(f"guidance config name {cname!r}: use 1-64 letters, digits, '_', '.', '-' "
                                 f"(and not {OFF!r}, which is the unguided policy)")
            if cfg is None:
                raise ValueError(f"guidance config {cname!r} is empty; the unguided policy is always served as {OFF!r}")
            as_dict = cfg.to_dict() if isinstance(cfg, GuidanceConfig) else GuidanceConfig.from_dict(dict(cfg)).to_dict()
            runtime.with_guidance(as_dict)  # fails now, naming the problem (e.g. no critic), not at the first request
            self.configs[cname] = as_dict
        self.default_config = default_config or next((n for n in self.configs if n != OFF), OFF)
        if self.default_config not in self.configs:
            raise ValueError(f"default config {self.default_config!r} is not one of {', '.join(self.configs)}")
        self.default_seed = check_seed(default_seed, "default_seed")
        self.max_batch, self.max_sessions = int(max_batch), int(max_sessions)
        self.schema = ObservationSchema.from_policy(runtime.policy)
        self.stats = {"requests": 0, "errors": 0, "refused": 0, "sessions_opened": 0}
        self._sessions: dict[int, Session] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._closed = False
        self._worker = threading.Thread(target=self._work, name="gaflow-serve-inference", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ sessions
    def open_session(self, seed: int | None = None) -> Session:
        """A new session at episode ``seed`` (default: the server's ``default_seed``)."""
        episode = self.default_seed if seed is None else check_seed(seed)
        with self._lock:
            if len(self._sessions) >= self.max_sessions:
                self.stats["refused"] += 1
                raise RequestError(f"the server already has {self.max_sessions} sessions (max_sessions); retry later")
            session = Session(self, next(self._ids), episode)
            self._sessions[session.id] = session
            self.stats["sessions_opened"] += 1
        return session

    def close_session(self, session: Session) -> None:
        with self._lock:
            self._sessions.pop(session.id, None)

    @property
    def num_sessions(self) -> int:
        return len(self._sessions)

    def metadata(self, session: Session) -> dict[str, Any]:
        """What a client learns on connect (openpi sends this before the first observation)."""
        spec = self.runtime.policy.spec
        return {
            "server": "gaflow", "protocol_version": 1, "policy": self.name, "mode": self.runtime.mode,
            "chunk_len": spec.chunk_len, "action_dim": spec.action_dim, "n_action_steps": self.runtime.n_action_steps,
            "noise_seed": self.noise_seed, "configs": dict(self.configs), "default_config": self.default_config,
            "control_key": CONTROL_KEY, "control_fields": {
                "config": f"one of {sorted(self.configs)}", "guidance": "true/false",
                "strength": "ρ if the config sets relative, else scale", "episode": "restart the noise stream"},
            "observation_schema": self.schema.describe(), "example_observation": self.schema.example(),
            "session": {"id": session.id, "episode": session.episode}, "max_batch": self.max_batch,
        }

    # ------------------------------------------------------------------ requests
    def resolve(self, control: RequestControl) -> tuple[tuple, dict | None]:
        """The (key, guidance config) a request runs under; :class:`RequestError` for a name not in the list."""
        name = self.default_config if control.config is None else control.config
        if name not in self.configs:
            raise RequestError(f"unknown guidance config {name[:80]!r}; this server has {', '.join(sorted(self.configs))}")
        if control.guidance is False:
            name = OFF
        elif control.guidance is True and name == OFF:
            guided = sorted(n for n in self.configs if n != OFF)
            raise RequestError("guidance on needs a guided config: pass 'config' "
                               f"({', '.join(guided) if guided else 'none: the server was started without one'})")
        config = self.configs[name]
        if control.strength is None or config is None:
            return (name, None), config
        config = dict(config)
        config["relative" if config.get("relative") is not None else "scale"] = control.strength
        try:
            GuidanceConfig.from_dict(config)
        except (TypeError, ValueError) as e:
            raise RequestError(f"strength {control.strength} is not valid for config {name!r}: {e}") from None
        return (name, control.strength), config

    def submit(self, session: Session, observation: Any) -> Future:
        """Queue one env observation (with an optional :data:`CONTROL_KEY` entry); the future yields the response
        dict. Raises :class:`RequestError` at once for a bad control or an observation that fails the schema."""
        try:
            if not isinstance(observation, Mapping):
                raise ObservationError(f"an observation must be a map of named fields, got {type(observation).__name__}")
            obs = dict(observation)
            control = RequestControl.parse(obs.pop(CONTROL_KEY, None))
            key, config = self.resolve(control)
            clean = self.schema.validate(obs)
        except ValueError as e:  # ObservationError, RequestError
            self._count("errors")
            raise RequestError(str(e)) from None
        return self._enqueue(_Job(session, "env", clean, control, key, config))

    def submit_batch(self, session: Session, batch: Any, control: RequestControl | None = None) -> Future:
        """Queue an observation batch of one already in the policy's input format (LeRobot's endpoint)."""
        control = control or RequestControl()
        key, config = self.resolve(control)
        return self._enqueue(_Job(session, "batch", batch, control, key, config))

    def infer(self, session: Session, observation: Any, timeout: float | None = None) -> dict[str, Any]:
        """Blocking :meth:`submit`."""
        return self.submit(session, observation).result(timeout)

    def warm_up(self) -> None:
        """One inference per config on the example observation, so the first client does not pay for lazy
        initialisation (allocator, LeRobot's first forward, text encoders)."""
        session = Session(self, 0, self.default_seed)  # not registered: invisible to clients and to max_sessions
        for name in self.configs:
            self.submit(session, {**self.schema.example(), CONTROL_KEY: {"config": name}}).result()
        with self._lock:
            self.stats["requests"] = 0  # count clients' requests only

    def _enqueue(self, job: _Job) -> Future:
        with self._lock:
            if self._closed:
                raise ServiceClosed("the server is shutting down")
            self.stats["requests"] += 1
            self._queue.put(job)
        return job.future

    def _count(self, stat: str) -> None:
        with self._lock:
            self.stats[stat] += 1

    # ------------------------------------------------------------------ the worker
    def _work(self) -> None:
        pending: deque[_Job] = deque()
        stopping = False
        while pending or not stopping:
            if not pending:
                job = self._queue.get()
                if job is None:
                    stopping = True
                    continue
                pending.append(job)
            while True:  # take what is already waiting (batching never waits for more)
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                else:
                    pending.append(job)
            first = pending.popleft()
            jobs = [first]
            if self.max_batch > 1 and self._batchable(first):
                sessions = {first.session.id}
                for job in list(pending):  # one job per session: its episode control must precede its draw
                    if len(jobs) >= self.max_batch:
                        break
                    if job.kind == first.kind and job.key == first.key and job.session.id not in sessions:
                        jobs.append(job)
                        sessions.add(job.session.id)
                        pending.remove(job)
            self._run([j for j in jobs if j.future.set_running_or_notify_cancel()])

    def _batchable(self, job: _Job) -> bool:
        # A random control draws from its own per-runtime stream: batched rows would share one session's stream.
        return job.kind == "env" and (job.config or {}).get("control", "none") != "random"

    def _run(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        started = time.perf_counter()
        try:
            for job in jobs:
                if job.control.episode is not None:
                    job.session.start_episode(job.control.episode)
            head = jobs[0]
            rt = head.session.runtime(head.key, head.config)
            noise = torch.cat([job.session.draw_noise(rt) for job in jobs])
            if head.kind == "env":
                out = rt.infer([job.observation for job in jobs], noise=noise, with_features=False)
            else:
                out = rt.infer_batch(head.observation, 1, noise=noise, with_features=False)
        except Exception as e:  # the policy failed on this input: tell its clients, keep serving
            self._count("errors")
            for job in jobs:
                job.future.set_exception(e)
            return
        for i, job in enumerate(jobs):
            name, strength = job.key
            guidance: dict[str, Any] = {"config": name, "enabled": job.config is not None}
            if job.config is not None:
                guidance["strength"] = strength if strength is not None else (
                    job.config["relative"] if job.config.get("relative") is not None else job.config.get("scale"))
            if out.diagnostics is not None:
                guidance.update(_plain(out.diagnostics[i]))
            response = {
                "actions": np.ascontiguousarray(out.actions[i]),  # (H, action_dim) in env units
                "guidance": guidance,
                "server_timing": {"infer_ms": out.latency_s * 1e3, "queue_ms": (started - job.submitted) * 1e3,
                                  "batch_size": len(jobs)},
                "session": {"episode": job.session.episode, "chunk": job.session.chunk_index},
            }
            job.session.chunk_index += 1
            job.future.set_result(response)

    def close(self, timeout: float | None = 30.0) -> None:
        """Finish the queued requests, then stop the worker (new requests raise :class:`ServiceClosed`)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._worker.join(timeout)


def _plain(value: Any) -> Any:
    """Diagnostics as plain Python numbers/lists (msgpack- and JSON-friendly)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value
