"""LeRobot 0.6.1's ``AsyncInference`` gRPC service, served by gaflow: LeRobot's own robot client
(``lerobot.async_inference.robot_client``) drives a guided policy with nothing changed on the robot side.

The protocol (``lerobot/transport/services.proto``): ``Ready`` → ``SendPolicyInstructions(pickled
RemotePolicyConfig)`` → a stream of ``SendObservations(pickled TimedObservation, in ≤ 2 MB chunks)`` while a second
client thread loops on ``GetActions`` → ``pickled list[TimedAction]``. What this server does differently from
LeRobot's ``PolicyServer``, and why:

* **No unrestricted unpickling.** Client bytes go through :func:`~gaflow.serving.pickle_allowlist.restricted_loads`
  (only the protocol's classes and numpy data) and a size cap; a payload naming any other global is refused with
  ``INVALID_ARGUMENT`` and never runs.
* **The policy is the server's.** ``SendPolicyInstructions`` never loads ``pretrained_name_or_path`` from the
  network (that would let a client make the server load any file or hub repo); it checks the client's
  ``policy_type``, features and ``actions_per_chunk`` against the policy the server was started with.
* **Validation with a clear status.** Observations are checked against the instructions' features (every joint a
  finite number, every camera a ``uint8 (H, W, 3)`` frame of the declared size) when they arrive, so the client's
  ``SendObservations`` call fails with a message naming the field, and the server keeps serving.
* **Sessions per client** (keyed by the gRPC peer): each ``Ready`` opens a session with its own noise stream, so
  several robots can share one server; LeRobot's server resets a single global state instead.
* **No similarity filter.** LeRobot drops observations whose joints moved less than 1 rad from the last predicted one
  unless ``must_go`` (which makes ``chunk_size_threshold`` moot, lerobot #1557); here the newest observation of a
  timestep not yet predicted always replaces the queued one.
* **Guidance diagnostics** of each chunk are logged (``TimedAction`` has no field for them); the openpi endpoint
  returns them to the client.

Bind it to loopback unless the robot is elsewhere: LeRobot's protocol has no authentication.
"""

from __future__ import annotations

import logging
import math
import pickle
import queue
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import torch

from gaflow.serving.pickle_allowlist import ForbiddenPickle, restricted_loads
from gaflow.serving.schema import MAX_TASK_CHARS
from gaflow.serving.service import CONTROL_KEY, GuidedPolicyService, RequestControl, RequestError, Session

log = logging.getLogger("gaflow.serve")

OBS_STATE = "observation.state"
OBS_IMAGES = "observation.images."
GRPC_MESSAGE_BYTES = 4 * 2**20 + 2**16  # LeRobot's client sends ≤ 2 MB chunks and allows 4 MB messages
MAX_IMAGE_SIDE = 8192


class InvalidMessage(ValueError):
    """A client message that does not fit the protocol or the served policy (sent back as INVALID_ARGUMENT)."""


@dataclass
class _Pending:
    timestamp: float
    timestep: int
    batch: dict[str, Any]
    control: RequestControl


@dataclass
class _Client:
    """One robot client: its gaflow session, its instructions and its one-slot observation queue."""

    session: Session
    features: dict[str, dict] | None = None
    actions_per_chunk: int = 0
    rename_map: dict[str, str] = field(default_factory=dict)
    observations: queue.Queue = field(default_factory=lambda: queue.Queue(maxsize=1))
    predicted: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _lerobot():
    from lerobot.async_inference import helpers
    from lerobot.transport import services_pb2, services_pb2_grpc

    return helpers, services_pb2, services_pb2_grpc


def make_servicer(service: GuidedPolicyService, **kwargs: Any):
    """A ``services_pb2_grpc.AsyncInferenceServicer`` for ``service`` (LeRobot imported here, on demand)."""
    _, _, services_pb2_grpc = _lerobot()

    class LeRobotAsyncInference(_AsyncInference, services_pb2_grpc.AsyncInferenceServicer):
        pass

    return LeRobotAsyncInference(service, **kwargs)


def add_to_server(servicer, server: grpc.Server) -> None:
    _, _, services_pb2_grpc = _lerobot()
    services_pb2_grpc.add_AsyncInferenceServicer_to_server(servicer, server)


class _AsyncInference:
    """The four RPCs; see the module docstring. Build it with :func:`make_servicer`."""

    def __init__(self, service: GuidedPolicyService, *, fps: float = 30.0, obs_queue_timeout_s: float = 1.0,
                 max_message_bytes: int = 16 * 2**20, max_clients: int = 16, infer_timeout_s: float = 600.0) -> None:
        policy = service.runtime.policy
        config = getattr(policy, "config", None)
        if not hasattr(config, "image_features") or not hasattr(policy, "family"):
            raise ValueError("the LeRobot gRPC endpoint serves LeRobot policies (lerobot:<dir>) only; "
                             f"this server runs {service.name!r}")
        if fps <= 0 or obs_queue_timeout_s <= 0:
            raise ValueError(f"fps and obs_queue_timeout_s must be > 0, got {fps} and {obs_queue_timeout_s}")
        self.service, self.family = service, policy.family
        self.image_shapes = {k: tuple(f.shape) for k, f in config.image_features.items()}  # (C, H, W)
        self.state_dim = next((f.shape[0] for f in service.schema.fields if f.key == OBS_STATE), 0)
        self.environment_dt = 1.0 / fps
        self.obs_queue_timeout_s, self.infer_timeout_s = obs_queue_timeout_s, infer_timeout_s
        self.max_message_bytes, self.max_clients = max_message_bytes, max_clients
        self._clients: OrderedDict[str, _Client] = OrderedDict()
        self._lock = threading.Lock()
        self._helpers, self._pb2, _ = _lerobot()

    # ------------------------------------------------------------------ clients
    def _client(self, context) -> _Client:
        with self._lock:
            client = self._clients.get(context.peer())
            if client is not None:
                self._clients.move_to_end(context.peer())
        if client is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "call Ready first (no session for this client)")
        return client

    def Ready(self, request, context):  # noqa: N802 (gRPC method names)
        peer = context.peer()
        try:
            session = self.service.open_session()
        except RequestError as e:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        with self._lock:
            old = self._clients.pop(peer, None)
            self._clients[peer] = _Client(session)
            evicted = []
            while len(self._clients) > self.max_clients:  # LeRobot clients never say goodbye: drop the stalest
                evicted.append(self._clients.popitem(last=False)[1])
        for gone in [c for c in (old, *evicted) if c is not None]:
            self.service.close_session(gone.session)
        log.info("gRPC session %d opened by %s (episode %d)", session.id, peer, session.episode)
        return self._pb2.Empty()

    def SendPolicyInstructions(self, request, context):  # noqa: N802
        client = self._client(context)
        try:
            setup = restricted_loads(request.data)
            features, actions_per_chunk, rename_map = self._check_instructions(setup)
        except (ForbiddenPickle, InvalidMessage) as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"policy instructions refused: {e}")
        with client.lock:
            client.features, client.actions_per_chunk, client.rename_map = features, actions_per_chunk, rename_map
        log.info("gRPC session %d: %s client (asked for %r, served: %s), %d actions per chunk", client.session.id,
                 setup.policy_type, setup.pretrained_name_or_path, self.service.name, actions_per_chunk)
        return self._pb2.Empty()

    def SendObservations(self, request_iterator, context):  # noqa: N802
        client = self._client(context)
        if client.features is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "send policy instructions before observations")
        data = self._receive(request_iterator, context)
        try:
            timed = restricted_loads(data)
            pending = self._prepare(client, timed)
        except (ForbiddenPickle, InvalidMessage, RequestError) as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"observation refused: {e}")
        with client.lock:
            if not timed.must_go and pending.timestep in client.predicted:
                return self._pb2.Empty()  # this timestep already has a chunk
            try:
                client.observations.get_nowait()  # the newest observation replaces a queued one
            except queue.Empty:
                pass
            client.observations.put_nowait(pending)
        return self._pb2.Empty()

    def GetActions(self, request, context):  # noqa: N802
        client = self._client(context)
        try:
            pending: _Pending = client.observations.get(timeout=self.obs_queue_timeout_s)
        except queue.Empty:
            return self._pb2.Actions(data=b"")  # LeRobot's client waits and asks again
        with client.lock:
            client.predicted.add(pending.timestep)
        try:
            result = self.service.submit_batch(client.session, pending.batch, pending.control).result(
                self.infer_timeout_s)
        except RequestError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except Exception as e:
            log.exception("gRPC session %d: inference failed", client.session.id)
            context.abort(grpc.StatusCode.INTERNAL, f"inference failed: {type(e).__name__}: {e}")
        actions = result["actions"][: client.actions_per_chunk]  # (n, action_dim)
        chunk = [self._helpers.TimedAction(timestamp=pending.timestamp + i * self.environment_dt,
                                           timestep=pending.timestep + i, action=torch.from_numpy(a.copy()))
                 for i, a in enumerate(actions)]
        g = result["guidance"]
        log.info("gRPC session %d chunk %d (t=%d, config %s): infer %.1f ms%s", client.session.id,
                 result["session"]["chunk"], pending.timestep, g["config"], result["server_timing"]["infer_ms"],
                 "" if "ratio_median" not in g else
                 f", ratio_median {g['ratio_median']:.3g}, gate_mean {g['gate_mean']:.3g}, fallback {g['fallback']}")
        return self._pb2.Actions(data=pickle.dumps(chunk))

    # ------------------------------------------------------------------ checks
    def _receive(self, request_iterator, context) -> bytes:
        """Reassemble LeRobot's chunked bytes (BEGIN, MIDDLE*, END), refusing more than ``max_message_bytes``."""
        states = self._pb2.TransferState
        buffer, size = [], 0
        for item in request_iterator:
            if item.transfer_state == states.TRANSFER_BEGIN:
                buffer, size = [], 0
            elif item.transfer_state not in (states.TRANSFER_MIDDLE, states.TRANSFER_END):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown transfer state {item.transfer_state}")
            size += len(item.data)
            if size > self.max_message_bytes:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"observation larger than {self.max_message_bytes} bytes (max_message_bytes)")
            buffer.append(item.data)
            if item.transfer_state == states.TRANSFER_END:
                return b"".join(buffer)
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "observation stream ended without TRANSFER_END")

    def _check_instructions(self, setup: Any) -> tuple[dict, int, dict]:
        if not isinstance(setup, self._helpers.RemotePolicyConfig):
            raise InvalidMessage(f"expected a RemotePolicyConfig, got {type(setup).__name__}")
        if setup.policy_type != self.family:
            raise InvalidMessage(f"this server serves a {self.family} policy ({self.service.name}); "
                                 f"the client asked for policy_type {setup.policy_type!r}")
        apc, chunk_len = setup.actions_per_chunk, self.service.runtime.policy.spec.chunk_len
        if isinstance(apc, bool) or not isinstance(apc, int) or not 1 <= apc <= chunk_len:
            raise InvalidMessage(f"actions_per_chunk must be an int in [1, {chunk_len}] (the policy's chunk), got {apc!r}")
        rename = setup.rename_map or {}
        if not isinstance(rename, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in rename.items()):
            raise InvalidMessage("rename_map must map strings to strings")
        features = setup.lerobot_features
        if not isinstance(features, dict):
            raise InvalidMessage(f"lerobot_features must be a dict, got {type(features).__name__}")
        cameras = set()
        for key, ft in features.items():
            if not isinstance(key, str) or not key.startswith("observation"):
                continue
            if not isinstance(ft, dict) or not {"dtype", "shape"} <= set(ft):
                raise InvalidMessage(f"lerobot_features[{key!r}] must be a dict with dtype, shape (and names)")
            shape = ft["shape"]
            if not isinstance(shape, (tuple, list)) or not all(isinstance(s, int) and s > 0 for s in shape):
                raise InvalidMessage(f"lerobot_features[{key!r}].shape must be positive ints, got {shape!r}")
            if key == OBS_STATE:
                names = ft.get("names")
                if ft["dtype"] != "float32" or list(shape) != [self.state_dim] or not isinstance(names, list) \
                        or len(names) != self.state_dim or not all(isinstance(n, str) for n in names):
                    raise InvalidMessage(f"lerobot_features[{key!r}] must be float32 with {self.state_dim} named "
                                         f"joints (the policy's state), got {ft['dtype']} {list(shape)}")
            elif ft["dtype"] in ("image", "video"):
                target = rename.get(key, key)
                if target not in self.image_shapes:
                    raise InvalidMessage(f"camera {key!r} is not one the policy takes ({', '.join(self.image_shapes)})")
                if len(shape) != 3 or shape[2] != 3 or max(shape) > MAX_IMAGE_SIDE:
                    raise InvalidMessage(f"camera {key!r} must be an RGB frame (H, W, 3), got {list(shape)}")
                cameras.add(target)
            else:  # LeRobot's client maps a robot to observation.state + observation.images.* only
                raise InvalidMessage(f"lerobot_features[{key!r}] ({ft['dtype']}) is neither the state nor a camera")
        if OBS_STATE not in features and self.state_dim:
            raise InvalidMessage(f"lerobot_features has no {OBS_STATE!r}; the policy takes {self.state_dim} joints")
        missing = sorted(set(self.image_shapes) - cameras)
        if missing:
            raise InvalidMessage(f"lerobot_features lacks the camera(s) {', '.join(missing)} the policy takes")
        return features, apc, dict(rename)

    def _prepare(self, client: _Client, timed: Any) -> _Pending:
        """Validate a raw robot observation and convert it as LeRobot's server does (resize to the policy's
        camera size, float images in [0, 1], state (1, S), the task string)."""
        if not isinstance(timed, self._helpers.TimedObservation):
            raise InvalidMessage(f"expected a TimedObservation, got {type(timed).__name__}")
        ts, step, raw = timed.timestamp, timed.timestep, timed.observation
        if not isinstance(ts, (int, float)) or not math.isfinite(ts):
            raise InvalidMessage(f"timestamp must be a finite number, got {ts!r}")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise InvalidMessage(f"timestep must be a non-negative int, got {step!r}")
        if not isinstance(raw, dict):
            raise InvalidMessage(f"observation must be a dict, got {type(raw).__name__}")
        problems, features = [], client.features or {}
        for key, ft in features.items():
            if key == OBS_STATE:
                for name in ft["names"]:
                    v = raw.get(name)
                    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)) \
                            or not math.isfinite(float(v)):
                        problems.append(f"joint {name!r} must be a finite number, got {v!r}"[:200])
            elif isinstance(ft, dict) and ft.get("dtype") in ("image", "video"):
                cam = key.removeprefix(OBS_IMAGES)
                v = raw.get(cam)
                if not isinstance(v, np.ndarray) or v.dtype != np.uint8 or v.shape != tuple(ft["shape"]):
                    got = f"{v.dtype} {v.shape}" if isinstance(v, np.ndarray) else type(v).__name__
                    problems.append(f"camera {cam!r} must be a uint8 frame {tuple(ft['shape'])}, got {got}")
        task = raw.get("task", "")
        if not isinstance(task, str) or len(task) > MAX_TASK_CHARS:
            problems.append(f"task must be a string of at most {MAX_TASK_CHARS} characters")
        if problems:
            raise InvalidMessage("; ".join(problems))
        control = RequestControl.parse(raw.get(CONTROL_KEY))
        self.service.resolve(control)  # an unknown config name fails here, where the client sees it
        shapes = {k: self.image_shapes[client.rename_map.get(k, k)] for k in features
                  if isinstance(features[k], dict) and features[k].get("dtype") in ("image", "video")}
        obs = self._helpers.raw_observation_to_observation({**raw, "task": task}, features, _Shapes(shapes))
        batch = {client.rename_map.get(k, k): v for k, v in obs.items()}
        return _Pending(float(ts), int(step), batch, control)


class _Shapes(dict):
    """``policy_image_features`` as LeRobot's helper reads it (``[key].shape``), keyed by the robot's camera."""

    def __getitem__(self, key):
        return _Shape(dict.__getitem__(self, key))


@dataclass(frozen=True)
class _Shape:
    shape: tuple

