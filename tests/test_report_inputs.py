"""Reports say what the policy and the critic read, and flag privileged simulator state."""

import json

from gaflow.evaluation.inputs import describe_reads, policy_reads, reads_line


def _compact(tmp_path, **flags):
    d = tmp_path / "policy"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"policy": flags}))
    return f"compact:{d}"


def _critic(tmp_path, keys):
    d = tmp_path / "critic"
    d.mkdir()
    (d / "critic.json").write_text(json.dumps({"feature_dims": {k: 4 for k in keys}}))
    return str(d)


def test_the_shipped_policy_is_reported_as_reading_privileged_state():
    r = policy_reads("compact:builtin")
    assert r == {"reads": ["camera image", "instruction", "proprioception", "privileged simulator state"],
                 "privileged": True}


def test_a_pixels_only_policy_and_its_critic_read_no_privileged_state(tmp_path):
    spec = _compact(tmp_path, use_image=True, use_language=True, use_state=True, use_env_state=False)
    reads = describe_reads(spec, _critic(tmp_path, ["observation", "task", "state"]))
    assert reads["policy"] == {"reads": ["camera image", "instruction", "proprioception"], "privileged": False}
    assert reads["critic"] == {"reads": ["observation", "task", "state", "chunk"], "privileged": False}
    line = reads_line(reads)
    assert "no privileged simulator state" in line and "**" not in line


def test_the_critic_inherits_privileged_state_through_the_fused_observation(tmp_path):
    spec = _compact(tmp_path, use_image=True, use_env_state=True)
    reads = describe_reads(spec, _critic(tmp_path, ["observation", "task"]))
    assert reads["critic"]["privileged"] is True
    assert "**privileged simulator state**" in reads_line(reads)
    # a critic on the task text alone does not
    assert describe_reads(spec, None)["critic"] is None


def test_lerobot_inputs_come_from_the_checkpoint_config(tmp_path):
    d = tmp_path / "smolvla"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"input_features": {"observation.images.top": {},
                                                                  "observation.images.wrist": {},
                                                                  "observation.state": {}}}))
    assert policy_reads(f"lerobot:{d}") == {"reads": ["camera image", "proprioception", "instruction"],
                                            "privileged": False}
    assert policy_reads("lerobot:lerobot/smolvla_base")["privileged"] is None  # a hub id: not known offline
