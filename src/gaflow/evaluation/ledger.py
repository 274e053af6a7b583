"""The test ledger: every evaluation that touches a test episode, across run folders — one read of a test split.

A success-rate claim is honest only if the test episodes behind it were read once, by a config fixed beforehand.
Per-run-folder histories cannot see a second run in a new folder, so gaflow keeps one append-only ledger
(``$GAFLOW_LEDGER``, default ``$XDG_DATA_HOME/gaflow/test_ledger.jsonl``, i.e. ``~/.local/share/gaflow/``).
Every stage that runs episodes — ``eval``, ``sweep`` (which refuses test seeds outright), ``collect`` (likewise),
``eval-policy``, the pipeline, and the library functions under them — checks the seeds it is given *by value*
against the env's split (a label can lie; a range can straddle splits) and, when any is a test seed, records a
*read*: the policy identity (a hash of its checkpoint files), env, tasks, the test seeds, the lock and critic
hashes, the run folder and, when it finishes, each arm's results.

A second read of the same (policy, env, task, test seed) by another run is refused unless forced
(``--force-reread``), and every report states which read it is ("read 2 of these test episodes") with the
earlier reads' results. Resuming the same run folder is the same read (its id is kept in ``<run>/test_read.json``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gaflow.io import atomic_write_json

LEDGER_ENV = "GAFLOW_LEDGER"
READ_FILE = "test_read.json"


class TestReread(RuntimeError):
    """Test episodes that an earlier run already read were asked for again without ``force``."""


def ledger_path() -> Path:
    if os.environ.get(LEDGER_ENV):
        return Path(os.environ[LEDGER_ENV])
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "gaflow" / "test_ledger.jsonl"


# ---------------------------------------------------------------------------------------------- identities
_HASH_CACHE: dict[tuple, str] = {}


def _hash_files(files: list[Path]) -> str:
    key = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if key not in _HASH_CACHE:
        h = hashlib.sha256()
        for f in files:
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        _HASH_CACHE[key] = h.hexdigest()[:16]
    return _HASH_CACHE[key]


def checkpoint_hash(path: str | os.PathLike) -> str:
    """A hash of a checkpoint folder's weights (``*.safetensors``; else every regular file) or of one file."""
    p = Path(path)
    if p.is_file():
        return _hash_files([p])
    files = sorted(p.glob("*.safetensors")) or sorted(f for f in p.iterdir() if f.is_file())
    if not files:
        raise FileNotFoundError(f"{p}: no checkpoint files to identify")
    return _hash_files(files)


def policy_identity(spec: str) -> str:
    """The identity of a base policy spec: the hash of its local checkpoint, or of the spec itself (hub ids, toy)."""
    scheme, _, rest = str(spec).partition(":")
    if scheme == "compact" and rest == "builtin":
        from importlib.resources import files

        rest = str(files("gaflow") / "assets" / "compact_metaworld")
    if rest and Path(rest).exists():
        return f"{scheme}:{checkpoint_hash(rest)}"
    return f"{scheme}:spec-{hashlib.sha256(str(spec).encode()).hexdigest()[:16]}"


def critic_identity(path: str | os.PathLike | None) -> str | None:
    return None if path is None else checkpoint_hash(path)


def test_seeds_of(env: str, seeds: list[int]) -> list[int]:
    """The seeds among ``seeds`` that fall in ``env``'s test split (checked by value, never by a label)."""
    from gaflow.evaluation.splits import split_for_env

    split = split_for_env(env)
    return [s for s in seeds if split.which(s) == "test"]


def seed_ranges(seeds: list[int]) -> str:
    """``[1, 2, 3, 7]`` → ``"1-3,7"`` (how reads are shown)."""
    out, seeds = [], sorted(set(seeds))
    i = 0
    while i < len(seeds):
        j = i
        while j + 1 < len(seeds) and seeds[j + 1] == seeds[j] + 1:
            j += 1
        out.append(str(seeds[i]) if i == j else f"{seeds[i]}-{seeds[j]}")
        i = j + 1
    return ",".join(out)


def prior_reads() -> dict[str, dict]:
    """Reads of test episodes made before this ledger existed, for the policies shipped in the package
    (``prior_test_reads.json``, from BENCHMARKS.md), and reads recorded in developers' ledgers since (they carry
    their ``ledger_read_id``); seeds are given as ``[first, last]`` ranges."""
    from importlib.resources import files

    data = json.loads((files("gaflow.evaluation") / "prior_test_reads.json").read_text())
    out = {}
    for r in data["reads"]:
        seeds = {t: list(range(a, b + 1)) for t, (a, b) in r["test_seeds"].items()}
        out[r["read_id"]] = {**r, "event": "begin", "test_seeds": seeds, "policy_id": policy_identity(r["policy"]),
                             "finished_at": r["started_at"], "prior": True}
    return out


# ---------------------------------------------------------------------------------------------- the ledger
class Ledger:
    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path is not None else ledger_path()

    @contextlib.contextmanager
    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield f
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def reads(self) -> dict[str, dict]:
        """Every recorded read by id (a begin entry updated by its finish entry), after the reads made before the
        ledger existed (:func:`prior_reads`)."""
        out: dict[str, dict] = prior_reads()
        if not self.path.exists():
            return out
        for n, line in enumerate(self.path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                e = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"test ledger {self.path} line {n} is not JSON ({err}); it is append-only — "
                                 "restore it from a backup rather than editing it") from err
            if e.get("event") == "begin":
                out[e["read_id"]] = dict(e)
            elif e.get("event") == "finish" and e.get("read_id") in out:
                out[e["read_id"]].update(finished_at=e["finished_at"], results=e["results"])
        # a listed read that this ledger itself recorded is the same read, not an earlier one
        return {k: r for k, r in out.items() if r.get("ledger_read_id") not in out}

    def overlapping(self, policy_id: str, env: str, task_seeds: dict[str, list[int]],
                    exclude: str | None = None, reads: dict[str, dict] | None = None) -> list[dict]:
        """Earlier reads of any of these (policy, env, task, test initial state) episodes, oldest first.

        Envs with a fixed set of initial states (LIBERO: a split with a period) compare initial states
        (``seed mod period``): a fresh noise repeat of an initial state that was read is not a fresh episode."""
        from gaflow.evaluation.splits import split_for_env

        period = split_for_env(env).period

        def state(seed: int) -> int:
            return seed % period if period else seed

        found = []
        for rid, r in (self.reads() if reads is None else reads).items():
            if rid == exclude or r["policy_id"] != policy_id or r["env"] != env:
                continue
            shared = {}
            for t, seeds in task_seeds.items():
                read = {state(x) for x in r["test_seeds"].get(t, [])}
                shared[t] = sorted(x for x in set(seeds) if state(x) in read)
            shared = {t: s for t, s in shared.items() if s}
            if shared:
                found.append({**r, "shared": {t: seed_ranges(s) for t, s in shared.items()},
                              "shared_count": sum(len(s) for s in shared.values())})
        return sorted(found, key=lambda r: r["started_at"])

    def begin(self, run: Path | None, *, command: str, policy: str, env: str, task_seeds: dict[str, list[int]],
              lock_hash: str | None = None, critic: str | None = None, force: bool = False) -> dict:
        """Record (or resume) the read of ``task_seeds``' test episodes by ``run``; refuse a re-read unless forced.

        Returns the read's header for reports: ``{"read_id", "read_index", "earlier": [...], "forced"}``.
        """
        marker = Path(run) / READ_FILE if run is not None else None
        previous = json.loads(marker.read_text()) if marker is not None and marker.exists() else None
        read_id = previous["read_id"] if previous else uuid.uuid4().hex[:16]
        policy_id = policy_identity(policy)
        with self._locked() as f:
            reads = self.reads()  # read once, under the lock
            earlier = self.overlapping(policy_id, env, task_seeds, exclude=read_id, reads=reads)
            if earlier and not force and not (previous and previous.get("forced")):
                lines = [f"  - {e['started_at'][:19]} {e['command']} → {e['run']}: {e['shared_count']} shared "
                         f"episodes ({'; '.join(f'{t} {s}' for t, s in e['shared'].items())})"
                         + (f"; results {json.dumps(e['results'])}" if e.get("results") else " (unfinished)")
                         for e in earlier]
                raise TestReread(
                    f"these test episodes were already read ({len(earlier)} earlier read(s) of policy {policy} on "
                    f"{env}):\n" + "\n".join(lines) + f"\nA result reported from a second read is not a clean "
                    "test result. Use fresh test seeds, or pass --force-reread (force=True) to read them again "
                    f"— the report will say so. Ledger: {self.path}")
            if previous is None or previous.get("read_id") not in reads:
                entry = {"event": "begin", "read_id": read_id, "command": command,
                         "run": str(Path(run).resolve()) if run is not None else None,
                         "policy": policy, "policy_id": policy_id, "env": env,
                         "test_seeds": {t: sorted(set(s)) for t, s in task_seeds.items()},
                         "lock_hash": lock_hash, "critic_id": critic_identity(critic) if critic else None,
                         "forced": bool(force and earlier), "started_at": datetime.now(UTC).isoformat()}
                f.write(json.dumps(entry) + "\n")
                f.flush()
                os.fsync(f.fileno())
        header = {"read_id": read_id, "read_index": len(earlier) + 1, "forced": bool(earlier),
                  "earlier": [{k: e.get(k) for k in ("started_at", "command", "run", "shared", "results")}
                              for e in earlier], "ledger": str(self.path)}
        if marker is not None:
            atomic_write_json(marker, {"read_id": read_id, "forced": header["forced"]})
        return header

    def finish(self, read_id: str, results: dict[str, Any]) -> None:
        with self._locked() as f:
            f.write(json.dumps({"event": "finish", "read_id": read_id, "results": results,
                                "finished_at": datetime.now(UTC).isoformat()}) + "\n")
            f.flush()
            os.fsync(f.fileno())


def read_header(run: Path) -> dict | None:
    """The ledger header a finished stage stored for ``run`` (``None`` when it read no test episode)."""
    path = Path(run) / "test_read_header.json"
    return json.loads(path.read_text()) if path.exists() else None


def record_read(run: Path | None, *, command: str, policy: str, env: str, seeds_by_task: dict[str, list[int]],
                lock_hash: str | None = None, critic: str | None = None, force: bool = False) -> dict | None:
    """What every stage calls before running episodes: ``None`` when no seed is a test seed, else the read header
    (also written to ``<run>/test_read_header.json`` for the report)."""
    task_seeds = {t: test_seeds_of(env, s) for t, s in seeds_by_task.items()}
    task_seeds = {t: s for t, s in task_seeds.items() if s}
    if not task_seeds:
        return None
    header = Ledger().begin(run, command=command, policy=policy, env=env, task_seeds=task_seeds,
                            lock_hash=lock_hash, critic=critic, force=force)
    if run is not None:
        atomic_write_json(Path(run) / "test_read_header.json", header)
    return header


def finish_read(header: dict | None, records_by_task: dict[str, list[dict]]) -> None:
    """Record each task's per-arm successes / episodes of a finished read (``records``: per-episode dicts with
    ``arms`` → name → ``success``, or plain episode summaries with ``success``)."""
    if header is None:
        return
    results: dict[str, dict] = {}
    for task, records in records_by_task.items():
        arms: dict[str, list[int]] = {}
        for r in records:
            for name, a in (r["arms"].items() if "arms" in r else [("unguided", r)]):
                k = arms.setdefault(name, [0, 0])
                k[0] += int(bool(a["success"]))
                k[1] += 1
        results[task] = {name: f"{k}/{n}" for name, (k, n) in arms.items()}
    Ledger(header["ledger"]).finish(header["read_id"], results)
