"""Named, disjoint seed ranges: critic data, validation, test.

Every episode is identified by ``(task, seed)`` and its initial state is a deterministic function of that pair
(each env wrapper guarantees and tests it), so a split of seeds is a split of initial states. Tuning commands
call :meth:`SeedSplit.seeds` with ``purpose="tune"``, which refuses the test split by construction.

Envs with a fixed set of initial states (LIBERO: 50 per task) use a split with a ``period``: the ranges then split
``seed mod period`` (the init-state index) and ``seed // period`` counts repeats of an init state with fresh
noise, so validation and test never share an initial state however many episodes each draws.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class SplitViolation(RuntimeError):
    """A hyperparameter-selecting command asked for test episodes."""


@dataclass(frozen=True)
class SeedSplit:
    ranges: dict[str, tuple[int, int]] = field(default_factory=lambda: dict(DEFAULT_RANGES))  # name: [start, stop)
    period: int | None = None  # ranges split seed mod period (e.g. LIBERO's init-state index); None: the seed itself

    def __post_init__(self) -> None:
        items = sorted(self.ranges.items(), key=lambda kv: kv[1][0])
        for name, (a, b) in items:
            if not (isinstance(a, int) and isinstance(b, int) and 0 <= a < b):
                raise ValueError(f"seed range {name!r} must be [start, stop) with 0 <= start < stop; got {(a, b)}")
        for (n1, (_, b1)), (n2, (a2, _)) in zip(items, items[1:], strict=False):
            if a2 < b1:
                raise ValueError(f"seed ranges {n1!r} and {n2!r} overlap")
        if "test" not in self.ranges:
            raise ValueError("a seed split needs a 'test' range")
        if self.period is not None and not all(b <= self.period for _, b in self.ranges.values()):
            raise ValueError(f"with period {self.period} every seed range must lie in [0, {self.period})")

    def seeds(self, name: str, count: int | None = None, *, purpose: str = "evaluate") -> list[int]:
        """The first ``count`` seeds of split ``name``. ``purpose="tune"`` refuses the test split."""
        if name not in self.ranges:
            raise KeyError(f"unknown seed split {name!r}; known: {', '.join(self.ranges)}")
        if purpose == "tune" and name == "test":
            raise SplitViolation("hyperparameter selection may not read test episodes (split 'test')")
        a, b = self.ranges[name]
        if self.period is not None:  # every init state of the range once, then again with the next repeat, ...
            count = b - a if count is None else count
            return [(k // (b - a)) * self.period + a + k % (b - a) for k in range(count)]
        count = b - a if count is None else count
        if count > b - a:
            raise ValueError(f"split {name!r} has {b - a} seeds; {count} requested")
        return list(range(a, a + count))

    def which(self, seed: int) -> str | None:
        key = seed % self.period if self.period is not None else seed
        for name, (a, b) in self.ranges.items():
            if a <= key < b:
                return name
        return None

    def to_dict(self) -> dict:
        out: dict = {k: list(v) for k, v in self.ranges.items()}
        if self.period is not None:
            out["period"] = self.period
        return out

    @classmethod
    def from_dict(cls, data: dict) -> SeedSplit:
        data = dict(data)
        period = data.pop("period", None)
        return cls({k: (int(v[0]), int(v[1])) for k, v in data.items()}, period=period)


DEFAULT_RANGES = {"demos": (0, 10_000), "critic": (10_000, 20_000), "validation": (20_000, 30_000),
                  "test": (30_000, 40_000)}
DEFAULT_SPLITS = SeedSplit()
# LIBERO: 50 init states per task. Inits 0–24 give demonstrations and critic rollouts, 25–34 validation, 35–49 test
# (100 test episodes per task = 15 inits × 7 noise repeats; see gaflow.envs.libero.episode_of_seed).
LIBERO_SPLITS = SeedSplit({"critic": (0, 25), "validation": (25, 35), "test": (35, 50)}, period=50)


def split_for_env(env: str) -> SeedSplit:
    """The seed split an env's episodes use: LIBERO's init-state split, else :data:`DEFAULT_SPLITS`."""
    from gaflow.envs.registry import parse_env_spec

    return LIBERO_SPLITS if parse_env_spec(env)[0] == "libero" else DEFAULT_SPLITS


def resolve_seeds(text: str, split: SeedSplit = DEFAULT_SPLITS, purpose: str = "evaluate") -> tuple[list[int], str]:
    """``"validation:50"`` (first 50 seeds of a named split) or explicit seeds (``"0-49,60"``) → (seeds, split name).

    Explicit seeds are labelled with the split they fall in (``"mixed"`` if several, ``"unsplit"`` if none), and
    ``purpose="tune"`` refuses any seed in the test range.
    """
    name, sep, count = text.partition(":")
    if sep and name in split.ranges:
        return split.seeds(name, int(count) if count else None, purpose=purpose), name
    seeds = parse_seeds(text)
    names = {split.which(s) for s in seeds}
    if purpose == "tune" and "test" in names:
        raise SplitViolation("hyperparameter selection may not read test episodes: seeds include the test range")
    label = names.pop() if len(names) == 1 else "mixed"
    return seeds, label or "unsplit"


def parse_seeds(text: str) -> list[int]:
    """``"1000-1049"``, ``"1,2,5"`` or a mix (``"0-4,10"``) → a sorted list of unique seeds."""
    seeds: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            if sep:
                a, b = int(lo), int(hi)
                if b < a:
                    raise ValueError
                seeds.update(range(a, b + 1))
            else:
                seeds.add(int(part))
        except ValueError:
            raise ValueError(f"bad seed range {part!r}: use e.g. '1000-1049' or '1,2,5'") from None
    if not seeds:
        raise ValueError(f"no seeds in {text!r}")
    return sorted(seeds)
