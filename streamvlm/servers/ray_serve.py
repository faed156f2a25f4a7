"""The FastAPI app as a Ray Serve deployment: one engine per replica, sessions routed by ``x-session-id``.

- ``ReplicaSpec``: what every replica loads (model, device, dtype, ``ServerSettings``).
- ``StreamVLMReplica``: the deployment. Its ``__init__`` loads the engine; the app is built
  afterwards around it (Serve's late-bound ingress, ``__serve_build_asgi_app__``), so the
  model is loaded once per replica and never pickled.
- ``bind_app`` / ``build_app``: the bound Serve application (``build_app`` is the builder a
  Serve config or a KubeRay ``RayService`` names: ``streamvlm.servers.ray_serve:build_app``).
- ``deploy``: connect to (or start) Ray, start Serve's proxy and run the application.

Routing: Ray's proxy copies the request header ``x-session-id`` (for HTTP requests and
websocket handshakes alike) into the request's metadata, and Serve's
``ConsistentHashRouter`` hashes it onto a ring of replicas; with no fallback replicas a
session always reaches the same replica while the replica set is unchanged; when a
replica leaves or joins, only the sessions hashed to it move. Requests without the
header are spread by a random id.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import ray
from ray import serve
from ray.serve.config import RequestRouterConfig

from ..cluster.settings import ClusterSettings
from ..errors import ConfigError
from .settings import ServerSettings

APP_NAME = "streamvlm"
# Ray's default session header; each proxy reads the name from RAY_SERVE_SESSION_ID_HEADER_KEY
SESSION_HEADER = "x-session-id"
SESSION_HEADER_ENV = "RAY_SERVE_SESSION_ID_HEADER_KEY"
REPLICA_HEADER = "x-streamvlm-replica"  # on every response: which replica answered (its Serve id)
CONSISTENT_HASH_ROUTER = "ray.serve.experimental.consistent_hash_router.ConsistentHashRouter"
# Requests beside the websockets that a replica admits at once: session creation, health
# and metrics probes, session reads and deletes.
REST_HEADROOM = 16


@dataclass(frozen=True)
class ReplicaSpec:
    """What each replica loads and serves; pickled to every replica.

    model:
        Model name, checkpoint directory (as seen on the replica's machine) or hub id.
    settings:
        The server's limits; ``settings.cluster`` set for a cluster with a shared store.
    device, dtype:
        ``StreamVLM.from_pretrained``'s; ``None``: CUDA when the replica has one, else CPU.
    engine_options:
        More ``from_pretrained`` keywords (``max_pixels``, ``attn_implementation``).
    replica_cache:
        Directory under which each replica keeps its local copies of the sessions it
        holds, one subdirectory per replica (``None``: under the system's temporary
        directory). Never shared between replicas.
    """

    model: str
    settings: ServerSettings = field(default_factory=ServerSettings)
    device: str | None = None
    dtype: str | None = None
    engine_options: Mapping[str, Any] = field(default_factory=dict)
    replica_cache: str | None = None

    def on_cuda(self) -> bool:
        """Whether replicas run on a GPU: ``--device cuda[:N]``, or no device named and a GPU
        present on the machine that deploys (the usual case of one kind of node)."""
        if self.device is not None:
            return self.device.split(":")[0] == "cuda"
        from ..cli_options import gpu_driver_present

        return gpu_driver_present()


def max_ongoing_requests(settings: ServerSettings) -> int:
    """Requests Serve lets one replica run at once.

    A websocket is one ongoing request for its whole life, so the bound admits
    ``max_sessions`` websockets, one more request per session (a chat completion or a
    session read while it streams) and ``REST_HEADROOM`` others. It is above what the app
    itself admits on purpose: with strict affinity (no fallback replica) a request over
    Serve's bound waits in the router instead of being refused, and the app's own
    ``503 too_many_sessions`` is the refusal a client can act on.
    """
    return 2 * settings.max_sessions + REST_HEADROOM


def replica_actor_options(spec: ReplicaSpec, overrides: Mapping[str, Any] | None = None) -> dict:
    """``ray_actor_options`` of a replica: one CPU, one GPU when on CUDA (one engine per GPU),
    updated with ``overrides`` (e.g. ``{"resources": {"streamvlm_replica": 1}}`` to pin
    replicas to labelled nodes)."""
    options: dict[str, Any] = {"num_cpus": 1}
    if spec.on_cuda():
        options["num_gpus"] = 1
    options.update(overrides or {})
    return options


def replica_cluster_settings(
    cluster: ClusterSettings, replica_name: str, cache_root: str | None
) -> ClusterSettings:
    """The cluster settings of one replica: its own name in the session directory and its
    own cache directory (``cache_root/replica_name``).

    The settings built where ``deploy`` runs name that process and its cache; every
    replica is another process, often on another machine, and two replicas must never
    share a name (their leases would be one) or a cache (their copies would clash).
    """
    root = cache_root or os.path.join(tempfile.gettempdir(), "streamvlm-cluster")
    return replace(cluster, replica_id=replica_name, cache_dir=os.path.join(root, replica_name))


class ReplicaHeader:
    """ASGI middleware naming the replica on every response: the ``REPLICA_HEADER`` header on
    HTTP responses and on the websocket handshake's accept. Clients and tests see which
    replica served a session; the app stays unaware of Ray."""

    def __init__(self, app, replica: str):
        self.app = app
        self.header = (REPLICA_HEADER.encode(), replica.encode())

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return

        async def send_named(message) -> None:
            if message["type"] in ("http.response.start", "websocket.accept"):
                message = {**message, "headers": [*message.get("headers", ()), self.header]}
            await send(message)

        await self.app(scope, receive, send_named)


@serve.deployment(
    name="StreamVLMReplica",
    request_router_config=RequestRouterConfig(
        request_router_class=CONSISTENT_HASH_ROUTER,
        # strict affinity: a session's requests never go to a replica that does not hold it
        request_router_kwargs={"num_fallback_replicas": 0},
    ),
    # A replica whose node died is noticed at its next missed health check: this period is
    # most of a session's failover time (measured on a local 3-node cluster: 9-10 s with a
    # 10 s period, 1.4 s with 2 s). The check itself is a few attribute reads.
    health_check_period_s=2.0,
    health_check_timeout_s=30.0,
    # a replica asked to stop lets open websockets finish for this long
    graceful_shutdown_timeout_s=30.0,
)
@serve.ingress()
class StreamVLMReplica:
    """One replica: a loaded ``StreamVLM`` and the streamvlm app around it.

    Health (``check_health``, every ``health_check_period_s``): the engine is loaded and the
    app was built. Not checked yet, and worth checking: that the session directory (Redis)
    and the shared store answer in cluster mode, and that the device lock is not held
    by one answer for longer than a question may take.
    """

    def __init__(self, spec: ReplicaSpec):
        from .. import StreamVLM

        context = serve.get_replica_context()
        self.replica = context.replica_id.unique_id
        settings = spec.settings
        if settings.cluster is not None:
            name = f"{socket.gethostname()}-{self.replica}"
            settings = replace(
                settings, cluster=replica_cluster_settings(settings.cluster, name, spec.replica_cache)
            )
        self.settings = settings
        load = {"device": spec.device, "dtype": spec.dtype, **spec.engine_options}
        self.engine = StreamVLM.from_pretrained(
            spec.model, **{k: v for k, v in load.items() if v is not None}
        )
        self.served_app = None  # not `app`: the ingress wrapper's property

    def __serve_build_asgi_app__(self):
        from .app import create_app

        self.served_app = create_app(self.engine, self.settings)
        return ReplicaHeader(self.served_app, self.replica)

    def check_health(self) -> None:
        """Raises when the replica cannot serve; Serve then replaces it."""
        if self.engine is None or self.served_app is None:
            raise RuntimeError(f"replica {self.replica}: the engine or the app is not ready")


def bind_app(
    spec: ReplicaSpec,
    *,
    replicas: int = 1,
    ray_actor_options: Mapping[str, Any] | None = None,
    **deployment_options: Any,
):
    """The Serve application: ``replicas`` copies of ``StreamVLMReplica`` serving ``spec``.

    ``ray_actor_options`` update the defaults of ``replica_actor_options``;
    ``deployment_options`` are more ``Deployment.options`` (``max_replicas_per_node``,
    ``health_check_period_s``, ...), applied last.
    """
    if replicas < 1:
        raise ConfigError(f"--replicas must be at least 1, got {replicas}")
    options = {
        "num_replicas": replicas,
        "max_ongoing_requests": max_ongoing_requests(spec.settings),
        "ray_actor_options": replica_actor_options(spec, ray_actor_options),
        **deployment_options,
    }
    return StreamVLMReplica.options(**options).bind(spec)


def build_app(args: dict[str, Any]):
    """Serve's application builder for config files (``import_path:
    streamvlm.servers.ray_serve:build_app``), with ``args``:

    ``model`` (required), ``replicas`` (1), ``device``, ``dtype``, ``max_sessions``,
    ``store`` and ``registry`` (both or neither: a cluster with a shared store),
    ``replica_cache``, ``lease_seconds``, ``flush_seconds``. The API key comes from
    ``STREAMVLM_API_KEY`` in
    the replicas' environment.
    """
    known = {
        "model",
        "replicas",
        "device",
        "dtype",
        "max_sessions",
        "store",
        "registry",
        "replica_cache",
        "lease_seconds",
        "flush_seconds",
    }
    unknown = sorted(set(args) - known)
    if unknown:
        raise ConfigError(f"build_app: unknown args {unknown}; use {sorted(known)}")
    if "model" not in args:
        raise ConfigError("build_app: args need 'model' (a model name, checkpoint directory or hub id)")
    if ("store" in args) != ("registry" in args):
        raise ConfigError(
            "build_app: give both 'store' and 'registry' (a cluster with a shared store), or neither"
        )
    overrides: dict[str, Any] = {}
    if "max_sessions" in args:
        overrides["max_sessions"] = int(args["max_sessions"])
    if "store" in args:
        timing = {
            name: float(args[arg])
            for name, arg in (("lease_s", "lease_seconds"), ("flush_s", "flush_seconds"))
            if arg in args
        }
        overrides["cluster"] = ClusterSettings(
            store_url=args["store"], registry_url=args["registry"], **timing
        )
    spec = ReplicaSpec(
        model=args["model"],
        settings=ServerSettings.from_env(**overrides),
        device=args.get("device"),
        dtype=args.get("dtype"),
        replica_cache=args.get("replica_cache"),
    )
    return bind_app(spec, replicas=int(args.get("replicas", 1)))


def check_session_header() -> None:
    """Refuse to deploy when this process's environment names another session header: the
    proxy would route by it and clients sending ``x-session-id`` would lose their affinity."""
    named = os.environ.get(SESSION_HEADER_ENV, SESSION_HEADER)
    if named.lower().replace("_", "-") != SESSION_HEADER:
        raise ConfigError(f"{SESSION_HEADER_ENV}={named}: streamvlm routes by {SESSION_HEADER}; unset it")


def connect_ray(address: str | None = None, replicas: int = 1) -> bool:
    """Connect this process to Ray at ``address`` (``None``: start a local Ray); returns
    whether it connected (``False``: it already was).

    Ray is kept quiet: no dashboard, no usage report, the replicas' logs stay in Ray's
    log directory (``/tmp/ray/session_latest/logs``), only warnings reach this process.
    A local Ray offers at least ``replicas`` CPUs (Ray's CPUs are slots, not cores), so
    that every replica can be placed even on a machine with fewer cores.
    """
    # Serve's client logs every step at INFO in this process (its own logger)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    # a local Ray warns, on every start, that token authentication is on: it is, and stays
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address is None:
        ray.init(num_cpus=max(os.cpu_count() or 1, replicas), include_dashboard=False, **quiet)
    else:
        ray.init(address=address, **quiet)
    return True


def deploy(
    spec: ReplicaSpec,
    *,
    replicas: int = 1,
    host: str = "127.0.0.1",
    port: int = 8000,
    ray_address: str | None = None,
    route_prefix: str = "/",
    app_name: str = APP_NAME,
    proxy_location: str = "HeadOnly",
    ray_actor_options: Mapping[str, Any] | None = None,
    **deployment_options: Any,
) -> str:
    """Run ``replicas`` replicas of ``spec`` on Ray Serve behind its HTTP proxy; returns the
    application's URL once every replica is up.

    Connects to Ray at ``ray_address`` (``None``: the one this process is connected to,
    else a new local Ray). Serve's proxy listens on ``host:port``; one proxy on the head
    node (``proxy_location``) by default, which is also the only choice when several
    nodes share one address (a local test cluster). When Serve is already running on the
    cluster its proxy keeps its own address, and that is the one returned.
    """
    check_session_header()
    connect_ray(ray_address, replicas)
    serve.start(proxy_location=proxy_location, http_options={"host": host, "port": port})
    application = bind_app(spec, replicas=replicas, ray_actor_options=ray_actor_options, **deployment_options)
    serve.run(application, name=app_name, route_prefix=route_prefix)
    listening = serve.context._get_global_client().http_config
    prefix = "" if route_prefix == "/" else route_prefix
    return f"http://{listening.host}:{listening.port}{prefix}"


def shutdown(app_name: str = APP_NAME, *, stop_serve: bool) -> None:
    """Delete the application (and stop Serve when ``stop_serve``: a Ray this process started)."""
    if stop_serve:
        serve.shutdown()
    else:
        serve.delete(app_name)
