"""A restricted unpickler for LeRobot's async-inference messages: only the classes that protocol carries.

LeRobot 0.6.1's robot client pickles a ``RemotePolicyConfig`` and ``TimedObservation`` dataclasses (raw robot
observations: floats, numpy camera frames, a task string) and its policy server calls ``pickle.loads`` on them, so
anyone who can reach that port can run code on the server. Here :meth:`pickle.Unpickler.find_class` — the only way
a pickle reaches a callable — admits exactly the globals below and refuses everything else with
:class:`ForbiddenPickle`, naming the global. Builtin containers and scalars need no global at all.

Deliberately **not** admitted: torch tensors. Their pickle rebuilds storage through ``torch.storage._load_from_bytes``,
i.e. an unrestricted ``torch.load`` of nested bytes. Numpy arrays are rebuilt only from numeric buffers (the server
then checks dtypes and shapes), and object arrays only recurse into this same unpickler.
"""

from __future__ import annotations

import io
import math
import pickle
from typing import Any

import numpy as np

ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset({
    # the protocol's own messages
    ("lerobot.async_inference.helpers", "RemotePolicyConfig"),
    ("lerobot.async_inference.helpers", "TimedObservation"),
    ("lerobot.configs.types", "PolicyFeature"),  # RemotePolicyConfig.lerobot_features may hold these
    ("lerobot.configs.types", "FeatureType"),
    # numpy arrays and scalars in raw observations (numpy 2 names, and numpy 1's for older clients)
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),  # pickle protocol 5
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
})


_RECONSTRUCT_MAX_ITEMS = 0  # numpy pickles an empty array here and fills it from the message's own bytes


def _reconstruct(subtype, shape, dtype):
    """numpy's ``_reconstruct`` without its one way to allocate memory the message did not pay for."""
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    if subtype is not np.ndarray or any(not isinstance(d, int) or d < 0 for d in dims) \
            or math.prod(dims) > _RECONSTRUCT_MAX_ITEMS:
        raise ForbiddenPickle(f"refused numpy _reconstruct({getattr(subtype, '__name__', subtype)}, {shape!r})")
    return np._core.multiarray._reconstruct(subtype, shape, dtype)


class ForbiddenPickle(pickle.UnpicklingError):
    """A pickle that names a global outside :data:`ALLOWED_GLOBALS` (or is not a pickle at all)."""


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise ForbiddenPickle(f"refused to unpickle global '{module}.{name}': LeRobot's async-inference protocol "
                                  "carries only RemotePolicyConfig, TimedObservation and numpy data")
        if name == "_reconstruct":
            return _reconstruct
        if module.startswith("numpy.core."):  # numpy 2 keeps these under numpy._core
            module = "numpy._core." + module.removeprefix("numpy.core.")
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise ForbiddenPickle("refused a pickle with persistent ids")


def restricted_loads(data: bytes) -> Any:
    """``pickle.loads`` that admits only :data:`ALLOWED_GLOBALS`; any failure is a :class:`ForbiddenPickle`."""
    try:
        return RestrictedUnpickler(io.BytesIO(data)).load()
    except ForbiddenPickle:
        raise
    except Exception as e:  # truncated or garbage bytes raise many types; the caller needs one
        raise ForbiddenPickle(f"not a valid pickle ({type(e).__name__}: {e})") from None
