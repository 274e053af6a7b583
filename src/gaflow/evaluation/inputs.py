"""What a base policy and its critic read, said plainly in every evaluation report.

A success rate from a policy or critic that reads privileged simulator state is a weaker claim than one from camera
images, the instruction and proprioception — what a robot has. Reports therefore name the inputs and flag privileged
state, read from the checkpoints' own config files (nothing is loaded or run).
"""

from __future__ import annotations

import json
from pathlib import Path

# compact policy config flag → what it reads
_COMPACT_INPUTS = (("use_image", "camera image"), ("use_language", "instruction"), ("use_state", "proprioception"),
                   ("use_env_state", "privileged simulator state"))
# LeRobot input feature → what it reads
_LEROBOT_PREFIXES = (("observation.images.", "camera image"), ("observation.image", "camera image"),
                     ("observation.state", "proprioception"),
                     ("observation.environment_state", "privileged simulator state"))
PRIVILEGED = "privileged simulator state"


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def policy_reads(spec: str) -> dict:
    """``{"reads": [...], "privileged": bool | None}`` for a policy spec; ``None``: not known offline (a hub id)."""
    scheme, _, rest = str(spec).partition(":")
    if scheme == "compact":
        from gaflow.policies.registry import builtin_compact_dir

        path = Path(builtin_compact_dir() if rest == "builtin" else rest) / "config.json"
        if not path.exists():
            return {"reads": [], "privileged": None}
        cfg = json.loads(path.read_text()).get("policy", {})
        reads = [name for flag, name in _COMPACT_INPUTS if cfg.get(flag)]
        return {"reads": reads, "privileged": bool(cfg.get("use_env_state"))}
    if scheme == "toy":
        return {"reads": ["toy state (position and goal)"], "privileged": True}
    if scheme == "lerobot":
        path = Path(rest) / "config.json"
        if not path.exists():
            return {"reads": [], "privileged": None}
        features = json.loads(path.read_text()).get("input_features", {})
        reads = _unique([name for key in features for prefix, name in _LEROBOT_PREFIXES if key.startswith(prefix)])
        return {"reads": [*reads, "instruction"], "privileged": PRIVILEGED in reads}
    return {"reads": [], "privileged": None}


def critic_reads(critic_dir: str | None, policy: dict) -> dict | None:
    """The critic's policy features (and the chunk); privileged if any feature carries privileged state — the
    fused ``observation`` embedding carries whatever the policy reads."""
    if critic_dir is None or not (Path(critic_dir) / "critic.json").exists():
        return None
    keys = list(json.loads((Path(critic_dir) / "critic.json").read_text())["feature_dims"])
    privileged = "env_state" in keys or ("observation" in keys and policy["privileged"])
    return {"reads": [*keys, "chunk"], "privileged": None if policy["privileged"] is None and not privileged
            else bool(privileged)}


def describe_reads(policy_spec: str, critic_dir: str | None) -> dict:
    policy = policy_reads(policy_spec)
    return {"policy": policy, "critic": critic_reads(critic_dir, policy)}


def reads_line(reads: dict) -> str:
    """One report line: what the policy and the critic read, privileged state in bold."""
    def part(name: str, r: dict | None) -> str:
        if r is None:
            return ""
        if not r["reads"]:
            return f"{name}: not known from its files"
        what = ", ".join(f"**{x}**" if x == PRIVILEGED else x for x in r["reads"])
        flag = {True: "reads privileged simulator state", False: "no privileged simulator state",
                None: "privileged inputs unknown"}[r["privileged"]]
        return f"{name} reads {what} ({flag})"

    parts = [p for p in (part("the policy", reads["policy"]), part("the critic", reads.get("critic"))) if p]
    return "What the models read: " + "; ".join(parts) + "."
