"""``GuidedPolicyServer``: the endpoints around one :class:`~gaflow.serving.GuidedPolicyService`, started and
stopped as one thing.

* the openpi websocket endpoint (always; :mod:`gaflow.serving.websocket`), with ``GET /healthz``;
* LeRobot's ``AsyncInference`` gRPC endpoint when ``grpc_port`` is set (:mod:`gaflow.serving.lerobot_grpc`).

Both bind to **loopback by default**: the server moves a robot, the gRPC protocol has no authentication, and its
messages are pickles (read through an allow-list, but still the larger attack surface). Binding elsewhere is a
decision (``host=`` / ``grpc_host=``); the server then logs a warning, and the websocket endpoint should carry an
API key.

Shutdown (``stop()``, or SIGTERM/SIGINT under :meth:`GuidedPolicyServer.serve_forever`) is graceful: stop
accepting connections, let the requests being computed finish and their replies go out (up to ``grace_s``), close
websocket clients with 1001 (going away), stop gRPC with the same grace, then stop the inference worker.

>>> from gaflow.runtime import GuidedRuntime, RuntimeSpec
>>> from gaflow.serving import GuidedPolicyServer, GuidedPolicyService, ServeConfig
>>> service = GuidedPolicyService(GuidedRuntime.from_spec(RuntimeSpec(policy="toy:default")))
>>> with GuidedPolicyServer(service, ServeConfig(port=0)) as server:   # port 0: any free port
...     server.port > 0
True
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass

from gaflow.serving.service import GuidedPolicyService
from gaflow.serving.websocket import OpenpiEndpoint

log = logging.getLogger("gaflow.serve")


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"  # openpi websocket endpoint (loopback unless told otherwise; see the module docstring)
    port: int = 8000  # openpi's default; 0 = any free port
    grpc_port: int | None = None  # LeRobot async inference (LeRobot's default is 8080); None = off
    grpc_host: str = "127.0.0.1"
    api_key: str | None = None  # websocket clients must send 'Authorization: Api-Key <key>'
    max_message_bytes: int = 16 * 2**20  # one observation frame; larger frames close the connection (1009)
    grace_s: float = 10.0  # shutdown: how long in-flight requests may take to finish
    lerobot_fps: float = 30.0  # TimedAction timestamps step by 1/fps (the robot client's control rate)
    obs_queue_timeout_s: float = 1.0  # GetActions waits this long for an observation before answering empty
    grpc_workers: int = 8  # gRPC handler threads (GetActions blocks while a chunk is computed)
    ping_interval_s: float | None = 20.0  # websocket keepalive: a silent, dead peer is dropped after 2 intervals

    def __post_init__(self) -> None:
        for name in ("port", "grpc_port"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 65535:
                raise ValueError(f"{name} must be in [0, 65535], got {value}")
        if self.max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes must be >= 1024, got {self.max_message_bytes}")
        if self.api_key is not None and (not self.api_key or any(c.isspace() for c in self.api_key)):
            raise ValueError("api_key must be a non-empty string without spaces")
        if self.grace_s < 0 or self.lerobot_fps <= 0 or self.obs_queue_timeout_s <= 0 or self.grpc_workers < 1:
            raise ValueError("grace_s must be >= 0; lerobot_fps, obs_queue_timeout_s and grpc_workers > 0")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class GuidedPolicyServer:
    """Run the endpoints of ``service``: :meth:`start` (background thread) / :meth:`stop`, a context manager, or
    :meth:`serve_forever` (this thread, until SIGTERM/SIGINT)."""

    def __init__(self, service: GuidedPolicyService, config: ServeConfig | None = None) -> None:
        self.service, self.config = service, config or ServeConfig()
        self.endpoint = OpenpiEndpoint(service, api_key=self.config.api_key)
        self.port: int | None = None
        self.grpc_port: int | None = None
        self._grpc = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        if self.config.grpc_port is not None:
            from gaflow.serving.lerobot_grpc import make_servicer  # LeRobot and grpc only when asked for

            self._servicer = make_servicer(service, fps=self.config.lerobot_fps,
                                           obs_queue_timeout_s=self.config.obs_queue_timeout_s,
                                           max_message_bytes=self.config.max_message_bytes)

    # ------------------------------------------------------------------ lifecycle
    async def _main(self, install_signal_handlers: bool) -> None:
        from websockets.asyncio.server import serve

        cfg = self.config
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        try:
            ws_server = await serve(self.endpoint.handle, cfg.host, cfg.port, process_request=self.endpoint.process_request,
                                    compression=None, max_size=cfg.max_message_bytes,
                                    ping_interval=cfg.ping_interval_s, ping_timeout=cfg.ping_interval_s)
            self.port = ws_server.sockets[0].getsockname()[1]
            if cfg.grpc_port is not None:
                self._start_grpc()
        except BaseException as e:
            self._error = e
            self._ready.set()
            raise
        for host, what in ((cfg.host, "websocket"), (cfg.grpc_host if cfg.grpc_port is not None else None, "gRPC")):
            if host is not None and not is_loopback(host):
                log.warning("the %s endpoint listens on %s, not loopback: anyone who can reach it can drive this "
                            "policy%s", what, host, " (LeRobot's protocol has no authentication)" if what == "gRPC"
                            else "" if cfg.api_key else "; set an API key")
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self._stop.set)
        self._ready.set()
        await self._stop.wait()
        log.info("shutting down: finishing requests in flight (up to %.1f s)", cfg.grace_s)
        ws_server.close(close_connections=False)  # stop accepting; connections close after drain()
        grpc_stopped = self._grpc.stop(cfg.grace_s) if self._grpc is not None else None
        await self.endpoint.drain(cfg.grace_s)
        await ws_server.wait_closed()
        if grpc_stopped is not None:
            await asyncio.get_running_loop().run_in_executor(None, grpc_stopped.wait, cfg.grace_s + 1)
        self.service.close(cfg.grace_s + 1)
        log.info("server stopped")

    def _start_grpc(self) -> None:
        import grpc

        from gaflow.serving.lerobot_grpc import GRPC_MESSAGE_BYTES, add_to_server

        cfg = self.config
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=cfg.grpc_workers, thread_name_prefix="gaflow-grpc"),
                             options=[("grpc.max_receive_message_length", GRPC_MESSAGE_BYTES),
                                      ("grpc.max_send_message_length", GRPC_MESSAGE_BYTES)])
        add_to_server(self._servicer, server)
        port = server.add_insecure_port(f"{cfg.grpc_host}:{cfg.grpc_port}")
        if port == 0:
            raise OSError(f"could not bind the gRPC endpoint to {cfg.grpc_host}:{cfg.grpc_port}")
        server.start()
        self._grpc, self.grpc_port = server, port

    def serve_forever(self, install_signal_handlers: bool = True, on_ready=None) -> None:
        """Serve in this thread until SIGTERM/SIGINT (or :meth:`stop` from another thread)."""
        if on_ready is not None:
            def announce() -> None:
                self._ready.wait()
                if self._error is None:
                    on_ready(self)

            threading.Thread(target=announce, daemon=True).start()
        asyncio.run(self._main(install_signal_handlers))

    def start(self, timeout: float = 60.0) -> GuidedPolicyServer:
        """Serve from a background thread; return once the endpoints are bound (ports in ``port``/``grpc_port``)."""
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main(False)), name="gaflow-serve",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"the server did not start within {timeout} s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Graceful shutdown (see the module docstring); returns when everything has stopped."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout if timeout is not None else self.config.grace_s * 2 + 5)

    def __enter__(self) -> GuidedPolicyServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
