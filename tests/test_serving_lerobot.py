"""`gaflow serve`, LeRobot endpoint: LeRobot 0.6.1's own robot client and gRPC stubs against the AsyncInference
service with the offline tiny SmolVLA. Chunks come back with LeRobot's shape and timing fields and equal the
in-process runtime's; pickles naming anything outside the protocol are refused and never run; bad messages get a
clear status and the server keeps serving. Loopback only, every call bounded in time."""

from __future__ import annotations

import os
import pickle
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from lerobot.async_inference.helpers import (
    RemotePolicyConfig,
    TimedAction,
    TimedObservation,
    map_robot_keys_to_lerobot_features,
    raw_observation_to_observation,
)
from lerobot.robots.config import RobotConfig
from lerobot.robots.robot import Robot
from lerobot.transport import services_pb2, services_pb2_grpc

from gaflow.critic import EnsembleMLPCritic
from gaflow.policies.registry import load_policy
from gaflow.runtime import GuidedRuntime
from gaflow.serving import GuidedPolicyServer, GuidedPolicyService, ServeConfig
from gaflow.serving.pickle_allowlist import ForbiddenPickle, restricted_loads
from gaflow.testing.lerobot_tiny import OfflineModelConfig, save_offline_checkpoint

torch.set_num_threads(1)
GUIDED = {"relative": 0.5}
JOINTS = [f"joint{i}.pos" for i in range(6)]  # the tiny SmolVLA: state 6, action 5, camera "top" (3, 96, 128)
ACTIONS = [f"motor{i}.pos" for i in range(5)]
FRAME = (120, 160, 3)  # the robot's camera; the server resizes it to the policy's 96 × 128, as LeRobot's does
TASK = "pick up the red cube"
MAX_MESSAGE = 1 << 20


# ------------------------------------------------------------------------------------------------ a fake robot
@RobotConfig.register_subclass("gaflow_fake_arm")
@dataclass(kw_only=True)
class FakeArmConfig(RobotConfig):
    joint_values: list[float] = field(default_factory=lambda: [0.1, -0.2, 0.3, 0.0, 0.5, -0.4])


class FakeArm(Robot):
    """A robot LeRobot's client builds through its plugin path (``FakeArmConfig`` → ``FakeArm``): fixed joints and
    camera frame, and a log of every action it was sent."""

    config_class, name = FakeArmConfig, "gaflow_fake_arm"

    def __init__(self, config: FakeArmConfig):
        super().__init__(config)
        self.joints, self.sent, self._connected = list(config.joint_values), [], False
        self.frame = np.random.default_rng(0).integers(0, 256, FRAME, dtype=np.uint8)

    @property
    def observation_features(self) -> dict:
        return {**dict.fromkeys(JOINTS, float), "top": FRAME}

    @property
    def action_features(self) -> dict:
        return dict.fromkeys(ACTIONS, float)

    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self, calibrate: bool = True) -> None:
        self._connected = True

    @property
    def is_calibrated(self) -> bool:
        return True

    def calibrate(self) -> None:
        pass

    def configure(self) -> None:
        pass

    def get_observation(self) -> dict:
        return {**dict(zip(JOINTS, self.joints, strict=True)), "top": self.frame.copy()}

    def send_action(self, action: dict) -> dict:
        self.sent.append(dict(action))
        return action

    def disconnect(self) -> None:
        self._connected = False


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    path = save_offline_checkpoint(OfflineModelConfig(family="smolvla", seed=1), tmp_path_factory.mktemp("smolvla"))
    policy = load_policy(f"lerobot:{path}", device="cpu")
    torch.manual_seed(0)
    critic = EnsembleMLPCritic({"task": 64, "observation": 64, "state": 6}, policy.spec.chunk_len,
                               policy.spec.action_dim, hidden=(16,), num_members=3).eval()
    return GuidedRuntime(policy, critic=critic, noise_seed=3)


@pytest.fixture(scope="module")
def server(runtime):
    service = GuidedPolicyService(runtime, {"guided": GUIDED}, name="tiny-smolvla")
    config = ServeConfig(port=0, grpc_port=0, max_message_bytes=MAX_MESSAGE, obs_queue_timeout_s=0.5, grace_s=5)
    with GuidedPolicyServer(service, config) as srv:
        yield srv


@pytest.fixture(scope="module")
def robot_features(tmp_path_factory):
    arm = FakeArm(FakeArmConfig(calibration_dir=tmp_path_factory.mktemp("calibration")))
    return map_robot_keys_to_lerobot_features(arm), arm


@pytest.fixture
def stub(server):
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    yield services_pb2_grpc.AsyncInferenceStub(channel)
    channel.close()


def setup_bytes(features, **overrides) -> bytes:
    fields = dict(policy_type="smolvla", pretrained_name_or_path="any/path", lerobot_features=features,
                  actions_per_chunk=8, device="cpu")
    return pickle.dumps(RemotePolicyConfig(**{**fields, **overrides}))


def observation_chunks(obj, *, raw: bytes | None = None):
    data = raw if raw is not None else pickle.dumps(obj)
    half = len(data) // 2
    return iter([services_pb2.Observation(transfer_state=services_pb2.TRANSFER_BEGIN, data=data[:half]),
                 services_pb2.Observation(transfer_state=services_pb2.TRANSFER_END, data=data[half:])])


def good_observation(arm, timestep=0, **changes):
    return TimedObservation(timestamp=time.time(), timestep=timestep, must_go=True,
                            observation={**arm.get_observation(), "task": TASK, **changes})


def expect_status(code, message, call, *args):
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=30)
    assert info.value.code() == code, info.value.details()
    assert message in info.value.details(), info.value.details()


def chunk_from(stub) -> list[TimedAction]:
    for _ in range(20):  # GetActions answers empty until an observation is queued (bounded retries)
        reply = stub.GetActions(services_pb2.Empty(), timeout=60)
        if reply.data:
            return pickle.loads(reply.data)
    raise AssertionError("no chunk within 20 GetActions calls")


# ------------------------------------------------------------------------------------------------ the unpickler
class RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_admits_the_protocol_and_refuses_code_and_torch_pickles(tmp_path, robot_features):
    features, arm = robot_features
    obs = restricted_loads(pickle.dumps(good_observation(arm, 4)))
    assert isinstance(obs, TimedObservation) and obs.observation["top"].shape == FRAME and obs.timestep == 4
    assert restricted_loads(setup_bytes(features)).lerobot_features == features
    marker = tmp_path / "pwned"
    with pytest.raises(ForbiddenPickle, match=r"'posix\.system'"):
        restricted_loads(pickle.dumps(RunsCode(marker)))
    with pytest.raises(ForbiddenPickle, match=r"'torch\._utils\._rebuild_tensor_v2'"):
        restricted_loads(pickle.dumps(torch.zeros(3)))  # its storage would go through an unrestricted torch.load
    with pytest.raises(ForbiddenPickle, match="not a valid pickle"):
        restricted_loads(b"\x80\x05garbage")
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------ LeRobot's client
def test_lerobot_robot_client_drives_the_guided_policy_and_gets_timed_chunks(server, runtime, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # LeRobot's client module writes logs/ into the working directory on import
    from lerobot.async_inference.configs import RobotClientConfig
    from lerobot.async_inference.robot_client import RobotClient

    class RecordingClient(RobotClient):
        """LeRobot's client, unchanged, keeping a copy of every chunk it receives."""

        received: list[list[TimedAction]] = []

        def _aggregate_action_queues(self, incoming_actions, aggregate_fn=None):
            self.received.append(list(incoming_actions))
            return super()._aggregate_action_queues(incoming_actions, aggregate_fn)

    fps, per_chunk = 30, 8
    cfg = RobotClientConfig(robot=FakeArmConfig(calibration_dir=tmp_path), policy_type="smolvla",
                            pretrained_name_or_path="ignored/by-gaflow", actions_per_chunk=per_chunk, task=TASK,
                            server_address=f"127.0.0.1:{server.grpc_port}", fps=fps, chunk_size_threshold=0.5)
    client = RecordingClient(cfg)
    assert client.start()
    threads = [threading.Thread(target=client.receive_actions, daemon=True),
               threading.Thread(target=client.control_loop, args=(TASK,), daemon=True)]
    for t in threads:
        t.start()
    deadline = time.time() + 90
    while (len(client.received) < 3 or len(client.robot.sent) < 12) and time.time() < deadline:
        time.sleep(0.05)
    client.stop()
    for t in threads:
        t.join(10)
    assert len(client.received) >= 3 and len(client.robot.sent) >= 12, (len(client.received), len(client.robot.sent))
    for chunk in client.received:
        assert len(chunk) == per_chunk
        assert all(a.get_action().shape == (5,) and a.get_action().dtype == torch.float32 for a in chunk)
        steps = [a.get_timestep() for a in chunk]
        assert steps == list(range(steps[0], steps[0] + per_chunk))
        t0 = chunk[0].get_timestamp()  # the observation's capture time; then one control period per action
        assert [a.get_timestamp() for a in chunk] == [t0 + i * (1 / fps) for i in range(per_chunk)]
    # The first chunk is the session's chunk 0 of episode 0 (the default seed), bit for bit.
    raw = {**client.robot.get_observation(), "task": TASK}
    batch = raw_observation_to_observation(raw, map_robot_keys_to_lerobot_features(client.robot),
                                           runtime.policy.config.image_features)
    reference = runtime.with_guidance(GUIDED)
    reference.start_episode(0)
    expected = reference.infer_batch(batch, 1).actions[0][:per_chunk]
    first = torch.stack([a.get_action() for a in client.received[0]]).numpy()
    assert np.array_equal(first, expected)
    assert [client.robot.sent[0][k] for k in ACTIONS] == [float(v) for v in expected[0]]


# ------------------------------------------------------------------------------------------------ refusals
def test_a_pickle_that_would_run_code_is_refused_and_the_next_request_succeeds(stub, robot_features, tmp_path):
    features, arm = robot_features
    marker = tmp_path / "pwned"
    stub.Ready(services_pb2.Empty(), timeout=30)
    expect_status(grpc.StatusCode.INVALID_ARGUMENT, "refused to unpickle global 'posix.system'",
                  stub.SendPolicyInstructions, services_pb2.PolicySetup(data=pickle.dumps(RunsCode(marker))))
    stub.SendPolicyInstructions(services_pb2.PolicySetup(data=setup_bytes(features)), timeout=30)
    expect_status(grpc.StatusCode.INVALID_ARGUMENT, "refused to unpickle global 'posix.system'",
                  stub.SendObservations, observation_chunks(RunsCode(marker)))
    assert not marker.exists()
    stub.SendObservations(observation_chunks(good_observation(arm)), timeout=30)
    chunk = chunk_from(stub)
    assert len(chunk) == 8 and chunk[0].get_timestep() == 0


BAD_OBSERVATIONS = {
    "NaN joint": ({JOINTS[2]: float("nan")}, "joint 'joint2.pos' must be a finite number"),
    "missing joint": ({JOINTS[0]: None}, "joint 'joint0.pos' must be a finite number"),
    "wrong frame size": ({"top": np.zeros((96, 128, 3), np.uint8)}, "camera 'top' must be a uint8 frame (120, 160, 3)"),
    "float frame": ({"top": np.zeros(FRAME, np.float32)}, "got float32"),
    "task not a string": ({"task": 7}, "task must be a string"),
    "bad control": ({"gaflow": {"config": "/etc/passwd"}}, "unknown guidance config '/etc/passwd'"),
}


def test_each_bad_message_gets_a_clear_status_and_the_next_one_succeeds(stub, robot_features):
    features, arm = robot_features
    stub.Ready(services_pb2.Empty(), timeout=30)
    expect_status(grpc.StatusCode.FAILED_PRECONDITION, "send policy instructions before observations",
                  stub.SendObservations, observation_chunks(good_observation(arm)))
    no_camera = {k: v for k, v in features.items() if "images" not in k}
    for overrides, message in (({"policy_type": "act"}, "serves a smolvla policy"),
                               ({"actions_per_chunk": 99}, "actions_per_chunk must be an int in [1, 10]"),
                               ({"lerobot_features": no_camera}, "lacks the camera(s) observation.images.top")):
        expect_status(grpc.StatusCode.INVALID_ARGUMENT, message,
                      stub.SendPolicyInstructions, services_pb2.PolicySetup(data=setup_bytes(features, **overrides)))
    stub.SendPolicyInstructions(services_pb2.PolicySetup(data=setup_bytes(features)), timeout=30)
    for step, (name, (changes, message)) in enumerate(BAD_OBSERVATIONS.items()):
        expect_status(grpc.StatusCode.INVALID_ARGUMENT, message,
                      stub.SendObservations, observation_chunks(good_observation(arm, step, **changes)))
        stub.SendObservations(observation_chunks(good_observation(arm, 100 + step)), timeout=30)
        assert chunk_from(stub)[0].get_timestep() == 100 + step, f"after {name}"
    expect_status(grpc.StatusCode.INVALID_ARGUMENT, "not a valid pickle",
                  stub.SendObservations, observation_chunks(None, raw=b"\x00garbage bytes"))
    big = good_observation(arm, 200, padding=np.zeros(MAX_MESSAGE, np.uint8))
    expect_status(grpc.StatusCode.RESOURCE_EXHAUSTED, f"observation larger than {MAX_MESSAGE} bytes",
                  stub.SendObservations, observation_chunks(big))
    stub.SendObservations(observation_chunks(good_observation(arm, 300)), timeout=30)
    assert chunk_from(stub)[0].get_timestep() == 300


def test_the_grpc_endpoint_serves_only_lerobot_policies():
    service = GuidedPolicyService(GuidedRuntime(load_policy("toy:default")))
    with pytest.raises(ValueError, match="LeRobot policies"):
        GuidedPolicyServer(service, ServeConfig(port=0, grpc_port=0))
    service.close()


def test_the_openpi_endpoint_serves_the_same_smolvla_with_uint8_frames(server, runtime):
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    policy = WebsocketClientPolicy(f"ws://127.0.0.1:{server.port}/?seed=2")
    meta = policy.get_server_metadata()
    assert meta["observation_schema"]["observation.images.top"]["shape"] == [96, 128, 3]
    obs = {**meta["example_observation"], "observation.state": np.linspace(-1, 1, 6, dtype=np.float32)}
    reply = policy.infer(obs)
    reference = runtime.with_guidance(GUIDED)
    reference.start_episode(2)
    assert np.array_equal(reply["actions"], reference.infer(obs).actions[0])
    assert reply["guidance"]["config"] == "guided" and np.isfinite(reply["guidance"]["ratio_median"])
