"""Serving a guided policy over the network (``gaflow serve``, issue #15) — the layer above the runtime.

* :class:`GuidedPolicyService` (:mod:`.service`): one loaded :class:`~gaflow.runtime.GuidedRuntime`, an allow-list
  of named guidance configs, a session (own noise stream) per client, per-request control, one inference worker.
* :class:`GuidedPolicyServer` / :class:`ServeConfig` (:mod:`.server`): its endpoints, started and stopped together —
  the openpi-compatible websocket endpoint (:mod:`.websocket`, wire format :mod:`.codec`) and LeRobot's
  ``AsyncInference`` gRPC endpoint (:mod:`.lerobot_grpc`, restricted unpickler :mod:`.pickle_allowlist`).
* :class:`ObservationSchema` (:mod:`.schema`): what the served policy takes, checked before inference.

Only the CLI (``gaflow serve``) imports this package. See docs/serving.md.
"""

from gaflow.serving.schema import ObservationError, ObservationSchema
from gaflow.serving.server import GuidedPolicyServer, ServeConfig
from gaflow.serving.service import (
    CONTROL_KEY,
    OFF,
    GuidedPolicyService,
    RequestControl,
    RequestError,
    Session,
)

__all__ = [
    "CONTROL_KEY",
    "OFF",
    "GuidedPolicyServer",
    "GuidedPolicyService",
    "ObservationError",
    "ObservationSchema",
    "RequestControl",
    "RequestError",
    "ServeConfig",
    "Session",
]
