"""The inference API as a part of a daemon: uvicorn on its own thread, contexts, workers.

The socket is bound before the thread starts, so a port in use or a bad address fails the
daemon's start with the reason instead of being logged by a thread nobody watches. The
served model is loaded into contexts of its own: the edge service keeps using its runtime
for evaluation (which switches adapters for a moment), and serving never sees those switches.
"""

import logging
import socket
import threading
import time
from pathlib import Path

import uvicorn

from appliance.config.model import ModelSettings
from appliance.config.serve import ServeSettings
from appliance.errors import ConfigError
from appliance.llm.runtime import Runtime
from appliance.serve.app import ApiSettings, build_app
from appliance.serve.guard import RateLimiter, TokenFileError, read_token
from appliance.serve.metrics import ServeMetrics
from appliance.serve.priority import INFERENCE, Activity, TrainingPauses
from appliance.serve.workers import AdapterTarget, Pool

log = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0


class InferenceServer:
    """OpenAI-compatible API over the served model, from `start()` to `stop()`."""

    def __init__(
        self,
        settings: ServeSettings,
        model: ModelSettings,
        pauses: TrainingPauses | None = None,
    ) -> None:
        self.settings = settings
        token = None
        if settings.token_file is not None:
            try:
                token = read_token(settings.token_file.get_secret_value())
            except TokenFileError as exc:
                raise ConfigError(str(exc)) from None
        self._pauses = pauses if settings.pause_training else None
        self.metrics = ServeMetrics()
        self.activity = Activity(self._on_activity, settings.training_resume_after_s)
        runtimes = [Runtime.from_settings(model) for _ in range(settings.contexts)]
        self.pool = Pool(
            runtimes,
            max_queue=settings.max_queue,
            default_max_tokens=settings.default_max_tokens,
            chat_template_fallback=settings.chat_template_fallback,
            metrics=self.metrics,
            activity=self.activity,
        )
        self.model_id = settings.model_id or Path(runtimes[0].info.path).name.removesuffix(".gguf")
        api = ApiSettings(
            model_id=self.model_id,
            token=token,
            max_body_bytes=settings.max_body_bytes,
            limiter=RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst),
            created=int(time.time()),
            gauges=self._gauges,
        )
        app = build_app(self.pool, api, self.metrics)
        self._uvicorn = uvicorn.Server(
            uvicorn.Config(
                app,
                log_level="warning",
                access_log=False,
                lifespan="off",
                timeout_graceful_shutdown=5,
                server_header=False,
            )
        )
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with `port = 0`)."""
        assert self._socket is not None, "not started"
        return int(self._socket.getsockname()[1])

    @property
    def url(self) -> str:
        """Base URL of the API (`.../v1`)."""
        host = self.settings.listen
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/v1"

    def use_adapter(self, version: int | None, path: Path | None) -> None:
        """Serve this global adapter version (None: the base model) from the next request."""
        self.pool.use(AdapterTarget(version, path))

    def start(self) -> None:
        """Bind, start the workers and the HTTP thread; return once it accepts requests."""
        family = socket.AF_INET6 if ":" in self.settings.listen else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.settings.listen, self.settings.port))
        except OSError as exc:
            sock.close()
            raise ConfigError(
                f"serve: cannot listen on {self.settings.listen}:{self.settings.port}: "
                f"{exc.strerror}"
            ) from None
        sock.listen(128)
        self._socket = sock
        self.activity.start()
        self.pool.start()
        self._thread = threading.Thread(
            target=self._uvicorn.run, kwargs={"sockets": [sock]}, name="serve-http", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._uvicorn.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError("serve: the HTTP server did not start (see the log)")
            time.sleep(0.02)
        log.info("inference API on %s (model %s)", self.url, self.model_id)

    def stop(self) -> None:
        """Stop accepting, end running requests, free the contexts; training may go on."""
        self._uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
        self.pool.stop()
        self.activity.stop()
        if self._socket is not None:
            self._socket.close()

    def _on_activity(self, busy: bool) -> None:
        if self._pauses is not None:
            self._pauses.vote(INFERENCE, "serving inference requests" if busy else None)

    def _gauges(self) -> dict[str, tuple[str, float]]:
        waiting, running = self.pool.depth()
        target = self.pool.target
        return {
            "queue_depth": ("Requests waiting for a model context.", waiting),
            "requests_running": ("Requests being generated now.", running),
            "contexts": ("Model contexts serving requests.", self.settings.contexts),
            "adapter_version": (
                "Global adapter version requests are served with (-1: base model).",
                -1 if target.version is None else target.version,
            ),
            "training_paused_for_inference": (
                "1 while the API holds the training worker paused.",
                1 if self.activity.busy and self._pauses is not None else 0,
            ),
        }
