"""`gaflow serve`, openpi endpoint: the real openpi client (openpi-client 0.1.2, unchanged) against a server on
loopback. Served chunks equal the in-process runtime's bit for bit; per-request control; a bad request gets a clear
error and the next one succeeds; concurrent sessions keep their own noise streams; SIGTERM shuts down gracefully.
Every network call here is bounded in count and time."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch
import websockets.exceptions
from openpi_client import msgpack_numpy
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from gaflow.critic import EnsembleMLPCritic
from gaflow.envs.registry import make_env
from gaflow.policies.registry import load_policy
from gaflow.policies.toy import ToyReachPolicy
from gaflow.runtime import GuidedRuntime, run_episode
from gaflow.serving import GuidedPolicyServer, GuidedPolicyService, RequestError, ServeConfig
from gaflow.serving.codec import CodecError, packb, unpackb

torch.set_num_threads(1)
GUIDED = {"relative": 0.3}
STRONG = {"relative": 0.6, "gate_k": 1.0}
MAX_MESSAGE = 256 * 1024  # the MetaWorld observation is ~21 KB (~85 KB with a float32 image)


def metaworld_critic(policy):
    """A fixed random ensemble over the compact policy's features (as tests/golden/record_episodes.py)."""
    torch.manual_seed(1234)
    dims = {"observation": policy.config.hidden_dim, "state": 4}
    return EnsembleMLPCritic(dims, policy.spec.chunk_len, policy.spec.action_dim, hidden=(32,), num_members=2).eval()


@pytest.fixture(scope="module")
def runtime():
    policy = load_policy("compact:builtin")
    return GuidedRuntime(policy, critic=metaworld_critic(policy), noise_seed=7)


@pytest.fixture(scope="module")
def server(runtime):
    service = GuidedPolicyService(runtime, {"guided": GUIDED, "strong": STRONG}, "guided", name="compact:builtin")
    service.warm_up()
    with GuidedPolicyServer(service, ServeConfig(port=0, max_message_bytes=MAX_MESSAGE, grace_s=5)) as srv:
        yield srv


def client(server, seed: int | None = None, **kwargs) -> WebsocketClientPolicy:
    url = f"ws://127.0.0.1:{server.port}/" + ("" if seed is None else f"?seed={seed}")
    return WebsocketClientPolicy(url, **kwargs)


def observation(seed: int, task: str = "insert the gripper into the hole") -> dict:
    rng = np.random.default_rng(seed)
    return {"observation.image": rng.integers(0, 256, (84, 84, 3), dtype=np.uint8),
            "observation.state": rng.normal(size=4).astype(np.float32),
            "observation.environment_state": rng.normal(size=39).astype(np.float32), "task": task}


# ------------------------------------------------------------------------------------------------ wire format
def test_codec_reads_what_the_openpi_client_packs_and_back_for_every_numeric_dtype():
    arrays = {str(dt): (np.arange(6) % 2).astype(dt).reshape(2, 3)
              for dt in (np.bool_, np.int8, np.uint8, np.int32, np.int64, np.float16, np.float32, np.float64)}
    sent = {"arrays": arrays, "scalar": np.float32(1.5), "task": "push", "n": 3}
    ours = unpackb(msgpack_numpy.packb(sent))
    theirs = msgpack_numpy.unpackb(packb(sent))
    for got in (ours, theirs):
        for name, a in arrays.items():
            assert got["arrays"][name].dtype == a.dtype and np.array_equal(got["arrays"][name], a)
        assert got["scalar"] == np.float32(1.5) and got["scalar"].dtype == np.float32
        assert got["task"] == "push" and got["n"] == 3


@pytest.mark.parametrize("frame, message", [
    (b"\xc1garbage", "not a msgpack frame"),
    (msgpack.packb({b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "|O", b"shape": [1]}), "not allowed"),
    (msgpack.packb({b"__ndarray__": True, b"data": b"\0" * 7, b"dtype": "<f4", b"shape": [2]}), "needs 8 bytes"),
    (msgpack.packb({b"__ndarray__": True, b"data": b"", b"dtype": "<f4", b"shape": [-1]}), "non-negative"),
    (msgpack.packb({b"__ndarray__": True, b"data": b"", b"dtype": "os.system", b"shape": []}), "not a numpy dtype"),
])
def test_codec_refuses_malformed_frames_naming_the_problem(frame, message):
    with pytest.raises(CodecError, match=message):
        unpackb(frame)


def test_codec_never_sends_object_arrays():
    with pytest.raises(CodecError, match="dtype object"):
        packb({"x": np.array([object()])})


# ------------------------------------------------------------------------------------------------ bit for bit
def test_metaworld_episode_through_the_openpi_client_matches_the_in_process_runtime_bit_for_bit(server, runtime):
    seed, max_steps = 5, 24
    env = make_env("metaworld", "hand-insert", image_size=runtime.policy.config.image_size, max_steps=max_steps)
    try:
        record = run_episode(env, runtime.with_guidance(GUIDED), seed=seed)
        policy = client(server, seed)
        meta = policy.get_server_metadata()
        n = meta["n_action_steps"]
        obs, done, steps, success, served = env.reset(seed), False, 0, None, []
        while not done:
            reply = policy.infer(obs)
            served.append(reply)
            for action in reply["actions"][:n]:
                obs, ok, done, _ = env.step(action)
                steps += 1
                if ok and success is None:
                    success = steps
                done = done or success is not None
                if done:
                    break
    finally:
        env.close()
    assert meta["default_config"] == "guided" and meta["session"]["episode"] == seed
    assert (steps, success) == (record.length, record.first_success_step)
    assert len(served) == len(record.chunks) > 1
    for k, (reply, chunk) in enumerate(zip(served, record.chunks, strict=True)):
        expected = runtime.policy.decode_actions(chunk.chunk[None]).numpy()[0]
        assert reply["actions"].dtype == np.float32 and np.array_equal(reply["actions"], expected), f"chunk {k}"
        assert reply["guidance"]["config"] == "guided" and reply["guidance"]["enabled"] is True
        assert reply["guidance"]["ratio_median"] == chunk.guidance["ratio_median"]
        assert reply["session"] == {"episode": seed, "chunk": k}
        assert reply["server_timing"]["infer_ms"] > 0


def test_the_example_observation_in_the_metadata_can_be_sent_as_is(server):
    policy = client(server)
    example = policy.get_server_metadata()["example_observation"]
    assert set(example) == {"observation.image", "observation.state", "observation.environment_state", "task"}
    assert policy.infer(example)["actions"].shape == (8, 4)


# ------------------------------------------------------------------------------------------------ control
def test_guidance_is_switched_per_request_and_every_config_shares_the_sessions_noise(server, runtime):
    obs = [observation(i) for i in range(4)]
    controls = [{"guidance": False}, {}, {"config": "strong"}, {"strength": 0.1}]
    configs = [None, GUIDED, STRONG, {"relative": 0.1}]
    policy = client(server, seed=11)
    served = [policy.infer({**o, "gaflow": c}) for o, c in zip(obs, controls, strict=True)]
    for k, (reply, cfg) in enumerate(zip(served, configs, strict=True)):
        reference = runtime.with_guidance(cfg)
        reference.start_episode(11)
        for earlier in obs[:k]:  # chunk k draws the k-th noise of episode 11, whatever config chunk k uses
            reference.infer(earlier)
        assert np.array_equal(reply["actions"], reference.infer(obs[k]).actions[0]), f"request {k}"
    assert [r["guidance"]["config"] for r in served] == ["off", "guided", "strong", "guided"]
    assert served[0]["guidance"] == {"config": "off", "enabled": False}
    assert served[3]["guidance"]["strength"] == 0.1 and served[3]["guidance"]["ratio_median"] == pytest.approx(0.1)
    restarted = policy.infer({**obs[0], "gaflow": {"episode": 11, "guidance": False}})
    assert np.array_equal(restarted["actions"], served[0]["actions"]) and restarted["session"]["chunk"] == 0


def test_a_config_is_picked_only_by_name_from_the_allow_list(server):
    policy = client(server)
    for name in ("/etc/passwd", "../locked.json", "nope"):
        with pytest.raises(RuntimeError, match=r"unknown guidance config .*this server has guided, off, strong"):
            policy.infer({**observation(0), "gaflow": {"config": name}})
    assert policy.infer({**observation(0), "gaflow": {"config": "strong"}})["guidance"]["config"] == "strong"


def test_service_refuses_bad_configs_at_start_naming_them(runtime):
    unguided = GuidedRuntime(runtime.policy)  # no critic
    with pytest.raises(ValueError, match="critic"):
        GuidedPolicyService(unguided, {"guided": GUIDED})
    with pytest.raises(ValueError, match="'off'"):
        GuidedPolicyService(runtime, {"off": GUIDED})
    with pytest.raises(ValueError, match="unknown guidance config field"):
        GuidedPolicyService(runtime, {"typo": {"relativ": 0.2}})
    with pytest.raises(ValueError, match="default config 'other'"):
        GuidedPolicyService(runtime, {"guided": GUIDED}, "other")


# ------------------------------------------------------------------------------------------------ bad input
BAD_REQUESTS = {
    "missing key": (lambda o: {k: v for k, v in o.items() if k != "observation.state"},
                    "missing key.*'observation.state'"),
    "unexpected key": (lambda o: {**o, "observation.images.top": np.zeros((4, 4, 3), np.uint8)},
                       "unexpected key.*'observation.images.top'"),
    "wrong image shape": (lambda o: {**o, "observation.image": np.zeros((64, 64, 3), np.uint8)},
                          r"'observation.image' must be a uint8 image \(84, 84, 3\), got uint8 \(64, 64, 3\)"),
    "wrong image dtype": (lambda o: {**o, "observation.image": o["observation.image"].astype(np.float32)},
                          "must be a uint8 image .* got float32"),
    "wrong state shape": (lambda o: {**o, "observation.state": np.zeros(5, np.float32)},
                          r"'observation.state' must be a float vector \(4,\), got float32 \(5,\)"),
    "integer state": (lambda o: {**o, "observation.state": np.zeros(4, np.int64)}, "float vector .* got int64"),
    "NaN": (lambda o: {**o, "observation.environment_state": np.full(39, np.nan, np.float32)},
            "'observation.environment_state' holds NaN or inf"),
    "inf": (lambda o: {**o, "observation.state": np.array([0, np.inf, 0, 0], np.float32)}, "NaN or inf"),
    "task not a string": (lambda o: {**o, "task": 3}, "'task' must be a string"),
    "not a map": (lambda o: [1, 2, 3], "must be a map"),
    "bad control": (lambda o: {**o, "gaflow": {"strength": -1}}, r"strength must be finite and in \[0"),
    "unknown control": (lambda o: {**o, "gaflow": {"temperature": 2}}, "unknown field.*'temperature'"),
    "guidance on without a config": (lambda o: {**o, "gaflow": {"config": "off", "guidance": True}},
                                     "guidance on needs a guided config"),
}


def test_each_bad_request_gets_a_clear_error_and_the_next_request_succeeds(server):
    policy = client(server)
    good = observation(1)
    for name, (corrupt, message) in BAD_REQUESTS.items():
        with pytest.raises(RuntimeError, match=message):
            policy.infer(corrupt(good))
        assert policy.infer(good)["actions"].shape == (8, 4), f"after {name}"
    # Frames the openpi client would never send: garbage bytes, an object array, a text frame.
    ws = policy._ws  # the client's own connection
    for frame, message in ((b"\x00\xffnot msgpack", "not a msgpack frame"),
                           (msgpack.packb({b"__ndarray__": True, b"data": b"x" * 8, b"dtype": "|O8",
                                           b"shape": [1]}), "dtype '|O8' is not allowed"),
                           ("hello", "expected a binary msgpack frame")):
        ws.send(frame)
        reply = ws.recv(timeout=10)
        assert isinstance(reply, str) and re.search(message, reply), reply
        assert policy.infer(good)["actions"].shape == (8, 4)


def test_an_oversized_message_closes_only_its_connection(server):
    policy = client(server)
    with pytest.raises(websockets.exceptions.ConnectionClosedError) as info:
        policy.infer({**observation(2), "padding": np.zeros(MAX_MESSAGE, np.uint8)})
    assert info.value.rcvd is None or info.value.sent.code == 1009  # we sent a too-big frame; the server failed it
    assert client(server).infer(observation(2))["actions"].shape == (8, 4)


def test_abrupt_disconnects_and_a_client_that_never_reads_do_not_stall_the_others(server):
    from websockets.sync.client import connect

    url, before = f"ws://127.0.0.1:{server.port}/", server.service.num_sessions
    for _ in range(3):  # send a request, then drop the TCP connection without a close frame
        ws = connect(url, compression=None, max_size=None)
        ws.recv(timeout=10)
        ws.send(msgpack_numpy.packb(observation(5)))
        ws.socket.close()
    hog = connect(url, compression=None, max_size=None)  # floods requests and never reads a reply
    hog.recv(timeout=10)
    for _ in range(20):
        hog.send(msgpack_numpy.packb({**observation(6), "gaflow": {"guidance": False}}))
    policy = client(server)
    started = time.perf_counter()
    for i in range(5):
        assert policy.infer(observation(i))["actions"].shape == (8, 4)
    assert time.perf_counter() - started < 60
    hog.close()
    deadline = time.time() + 30
    while server.service.num_sessions > before + 1 and time.time() < deadline:  # only `policy` is left
        time.sleep(0.1)
    assert server.service.num_sessions == before + 1


def test_healthz_answers_without_a_key_and_a_wrong_key_is_refused(runtime):
    service = GuidedPolicyService(runtime)
    with GuidedPolicyServer(service, ServeConfig(port=0, api_key="s3cret")) as srv:
        health = urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/healthz", timeout=10)
        assert health.status == 200 and b'"status": "ok"' in health.read()
        for key in (None, "wrong"):
            with pytest.raises(websockets.exceptions.InvalidStatus, match="401"):
                WebsocketClientPolicy(f"ws://127.0.0.1:{srv.port}", api_key=key)
        with pytest.raises(websockets.exceptions.InvalidStatus, match="400"):
            WebsocketClientPolicy(f"ws://127.0.0.1:{srv.port}/?seed=-3", api_key="s3cret")
        ok = WebsocketClientPolicy(f"ws://127.0.0.1:{srv.port}", api_key="s3cret")
        assert ok.infer(observation(3))["guidance"]["config"] == "off"


# ------------------------------------------------------------------------------------------------ concurrency
@pytest.mark.parametrize("clients, requests, config", [
    (8, 20, None),  # unguided: the test is about sessions and concurrency, not compute
    pytest.param(8, 50, GUIDED, marks=pytest.mark.slow),
])
def test_concurrent_clients_each_get_their_sessions_reproducible_chunks(server, runtime, clients, requests, config):
    obs = [observation(100 + i) for i in range(requests)]
    control = {"gaflow": {"guidance": config is not None}}

    def drive(seed: int) -> list[np.ndarray]:
        policy = client(server, seed)
        return [policy.infer({**o, **control})["actions"] for o in obs]

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        served = list(pool.map(drive, range(clients), timeout=300))
    assert time.perf_counter() - started < 300
    reference = runtime.with_guidance(config)
    for seed, actions in enumerate(served):
        reference.start_episode(seed)
        expected = [reference.infer(o).actions[0] for o in obs]
        assert all(np.array_equal(a, e) for a, e in zip(actions, expected, strict=True)), f"session {seed}"
    assert not np.array_equal(served[0][0], served[1][0])  # sessions really have their own streams


class GatedToyPolicy(ToyReachPolicy):
    """The toy policy, whose encode waits for ``gate`` (holds the worker while requests queue up)."""

    def __init__(self, gate: threading.Event):
        super().__init__()
        self.gate = gate

    def encode(self, batch):
        assert self.gate.wait(30)
        return super().encode(batch)


def test_waiting_requests_of_one_config_share_a_policy_call_and_equal_their_unbatched_chunks():
    gate = threading.Event()
    critic = lambda f, a: -(a - 0.5).pow(2).sum((1, 2))  # noqa: E731
    rt = GuidedRuntime(GatedToyPolicy(gate), critic=critic)
    service = GuidedPolicyService(rt, {"guided": {"relative": 0.4}}, max_batch=8)
    obs = [{"observation.state": np.array([0.1 * i, 0, 1, 1], np.float32)} for i in range(9)]
    first = service.submit(service.open_session(100), obs[8])  # the worker takes it and waits at the gate
    time.sleep(0.2)
    futures = [service.submit(service.open_session(seed), o) for seed, o in enumerate(obs[:8])]
    gate.set()
    replies = [f.result(timeout=30) for f in futures]
    assert first.result(timeout=30)["server_timing"]["batch_size"] == 1
    service.close()
    assert [r["server_timing"]["batch_size"] for r in replies] == [8] * 8
    for seed, (reply, o) in enumerate(zip(replies, obs, strict=False)):
        alone = GuidedRuntime(ToyReachPolicy(), critic=critic, guidance={"relative": 0.4})
        alone.start_episode(seed)
        assert np.array_equal(reply["actions"], alone.infer(o).actions[0])


def test_sessions_beyond_max_sessions_are_refused_with_a_reason(runtime):
    service = GuidedPolicyService(runtime, max_sessions=2)
    service.open_session(), service.open_session()
    with pytest.raises(RequestError, match="2 sessions"):
        service.open_session()
    service.close()


# ------------------------------------------------------------------------------------------------ the CLI
def test_gaflow_serve_shuts_down_gracefully_on_sigterm(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gaflow.cli", "serve", "--policy", "toy:default", "--port", "0",
                                 "--num-threads", "1"], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline, port = time.time() + 90, None
        while port is None and time.time() < deadline and proc.poll() is None:
            found = re.search(r"ws://127\.0\.0\.1:(\d+)", log.read_text())
            port = int(found.group(1)) if found else time.sleep(0.2)
        assert port is not None, log.read_text()
        policy = WebsocketClientPolicy(f"ws://127.0.0.1:{port}/?seed=4")
        assert policy.infer({"observation.state": np.zeros(4, np.float32)})["actions"].shape == (6, 2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        with pytest.raises(websockets.exceptions.ConnectionClosedOK) as info:
            policy._ws.recv(timeout=10)
        assert info.value.rcvd.code == 1001  # going away
        assert "server stopped" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_gaflow_serve_reads_named_configs_from_files_locks_and_inline_json(tmp_path):
    import json

    import typer

    from gaflow.cli.serve import _named_config
    from gaflow.collect import CollectConfig, collect
    from gaflow.critic.data import ChunkTable
    from gaflow.critic.train import CriticTrainConfig, train_critic
    from gaflow.evaluation.runner import EvalConfig
    from gaflow.evaluation.splits import DEFAULT_SPLITS
    from gaflow.evaluation.sweep import run_sweep
    from gaflow.guidance import GuidanceConfig

    collect(CollectConfig(policy="toy:default", env="toy", tasks=["toy-reach"], seeds=DEFAULT_SPLITS.seeds("critic", 8)),
            tmp_path / "c", workers=1, progress=False, write_dataset=False)
    train_critic(ChunkTable.load(tmp_path / "c" / "chunks.safetensors"),
                 CriticTrainConfig(features=("state",), hidden=(8,), epochs=1), out_dir=tmp_path / "critic",
                 progress=False)
    cfg = GuidanceConfig(relative=0.2)
    run_sweep(EvalConfig(policy="toy:default", env="toy", tasks=["toy-reach"], seeds=DEFAULT_SPLITS.seeds("validation", 2),
                         split="validation", critic=str(tmp_path / "critic")),
              [cfg.to_dict()], tmp_path, progress=False, rule="fixed")  # writes tmp_path/locked.json
    lock = json.loads((tmp_path / "locked.json").read_text())
    (tmp_path / "g.json").write_text(json.dumps({"scale": 0.5}))
    name, got, critic = _named_config(f"locked={tmp_path / 'locked.json'}")
    assert (name, got) == ("locked", cfg.to_dict()) and Path(critic).resolve() == (tmp_path / "critic").resolve()
    assert _named_config(f"mine={tmp_path / 'g.json'}") == ("mine", {"scale": 0.5}, None)
    assert _named_config('strong={"relative": 0.4}') == ("strong", {"relative": 0.4}, None)
    (tmp_path / "edited.json").write_text(json.dumps({**lock, "guidance": {**lock["guidance"], "relative": 0.9}}))
    with pytest.raises(typer.BadParameter, match="hash mismatch"):
        _named_config(f"locked={tmp_path / 'edited.json'}")
    with pytest.raises(typer.BadParameter, match="NAME="):
        _named_config("just-a-name")
