"""``streamvlm serve --ray``: the server as replicas on Ray Serve (docs/deploy.md).

Imports only plain Python: every option is checked before Ray or torch is imported, so
a mistake is one ``error:`` line at once; ``deployment`` (Ray, the model) loads after.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import signal
import sys
import time
from dataclasses import replace

from ..cli_options import positive_int
from ..cluster.settings import ClusterSettings
from ..errors import ConfigError

# the options that mean something only with --ray: (attribute, flag)
RAY_ONLY = (
    ("store", "--store"),
    ("registry", "--registry"),
    ("replicas", "--replicas"),
    ("ray_address", "--ray-address"),
    ("replica_cache", "--replica-cache"),
    ("lease_seconds", "--lease-seconds"),
    ("flush_seconds", "--flush-seconds"),
)


def add_ray_options(parser: argparse.ArgumentParser) -> None:
    """``--ray`` and the options of a cluster, in their own group of ``parser``'s help."""
    group = parser.add_argument_group(
        "cluster (docs/deploy.md)",
        "Serve the same app as replicas on Ray Serve, one model per replica (one GPU each on "
        "CUDA), every request of a session routed to one replica by its x-session-id header.",
    )
    group.add_argument(
        "--ray",
        action="store_true",
        help="serve on Ray Serve instead of one process; --host and --port are the Serve proxy's",
    )
    group.add_argument(
        "--replicas",
        type=positive_int,
        default=None,
        metavar="N",
        help="replicas, one engine each (default: 1)",
    )
    group.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="the Ray cluster to deploy to (host:port, ray://host:port or auto; default: start a local Ray)",
    )
    group.add_argument(
        "--store",
        default=None,
        metavar="URL",
        help="the shared long-term store every replica reaches: file:///shared/dir or s3://bucket/prefix "
        "(needs --registry; default: none, each replica's sessions are its own)",
    )
    group.add_argument(
        "--registry",
        default=None,
        metavar="URL",
        help="the session directory with its leases: redis://host:port/db (needs --store)",
    )
    group.add_argument(
        "--replica-cache",
        default=None,
        metavar="DIR",
        help="absolute directory on each replica's machine under which it keeps its copies of the "
        "sessions it holds, one subdirectory per replica (default: under the system's temporary directory)",
    )
    group.add_argument(
        "--lease-seconds",
        type=_positive_seconds,
        default=None,
        metavar="S",
        help=f"a session lease not renewed for this long expires (default: {ClusterSettings.lease_s:g})",
    )
    group.add_argument(
        "--flush-seconds",
        type=_positive_seconds,
        default=None,
        metavar="S",
        help="publish each session's new blocks to the store at least this often: what a replica's "
        f"crash can lose (default: {ClusterSettings.flush_s:g})",
    )


def cluster_settings_from_args(args: argparse.Namespace) -> ClusterSettings | None:
    """The ``ClusterSettings`` the options give (``None``: no shared store), checked.

    Raises:
        ConfigError: a cluster option without ``--ray``, ``--store`` without ``--registry``
            (or the reverse), a URL of the wrong kind, a relative ``--replica-cache``.
    """
    if not args.ray:
        for attribute, flag in RAY_ONLY:
            if getattr(args, attribute, None) is not None:
                raise ConfigError(f"{flag} needs --ray")
        return None
    if args.replica_cache is not None and not os.path.isabs(args.replica_cache):
        raise ConfigError(
            f"--replica-cache {args.replica_cache}: give an absolute path (it is on each replica's machine)"
        )
    if args.ray_address is not None and not args.ray_address.strip():
        raise ConfigError("--ray-address is empty; give host:port, ray://host:port or auto, or leave it out")
    if args.store is None and args.registry is None:
        for attribute, flag in (("lease_seconds", "--lease-seconds"), ("flush_seconds", "--flush-seconds")):
            if getattr(args, attribute) is not None:
                raise ConfigError(f"{flag} needs --store and --registry (it is about shared sessions)")
        return None
    if args.store is None or args.registry is None:
        given, missing = ("--store", "--registry") if args.registry is None else ("--registry", "--store")
        raise ConfigError(f"{given} needs {missing}: replicas share sessions through both")
    timing = {
        name: value
        for name, value in (("lease_s", args.lease_seconds), ("flush_s", args.flush_seconds))
        if value is not None
    }
    # replica_id and cache_dir are each replica's own; the replicas set them (deployment.py)
    return ClusterSettings(store_url=args.store, registry_url=args.registry, **timing)


def cmd_serve_ray(args: argparse.Namespace, settings) -> int:
    """Run ``streamvlm serve --ray`` until interrupted: deploy the replicas, say where the
    proxy listens, and on Ctrl-C remove them (and stop the Ray this command started).

    ``settings`` are the server's, from the ``serve`` options; the cluster options are
    checked here again (cheap) and set on them.
    """
    cluster = cluster_settings_from_args(args)
    settings = replace(settings, cluster=cluster)
    if args.port == 0:
        raise ConfigError("--port 0: Serve's proxy needs a port named in advance; give one, e.g. --port 8000")
    if importlib.util.find_spec("ray") is None:
        raise ConfigError("streamvlm serve --ray needs Ray: pip install 'streamvlm[cluster]'")
    if args.ray_address is None:
        _check_port_free(args.host, args.port)  # a local proxy would bind it: fail before Ray starts

    from ..cli_options import announce_listening, model_options
    from . import ray_serve as deployment
    from .settings import API_KEY_ENV

    options = model_options(args)
    spec = deployment.ReplicaSpec(
        model=args.model,
        settings=settings,
        device=options.pop("device", None),
        dtype=options.pop("dtype", None),
        engine_options=options,
        replica_cache=args.replica_cache,
    )
    replicas = args.replicas or 1
    print(
        f"streamvlm: starting {replicas} replica(s) of {args.model} on Ray Serve", file=sys.stderr, flush=True
    )
    started_ray = deployment.connect_ray(args.ray_address, replicas) and args.ray_address is None
    url = deployment.deploy(
        spec, replicas=replicas, host=args.host, port=args.port, ray_address=args.ray_address
    )
    host, port = _host_port(url)
    unguarded = f"with no {API_KEY_ENV}: anyone who can reach it can open sessions"
    announce_listening(
        f"serving {args.model} on {replicas} replica(s), sessions routed by {deployment.SESSION_HEADER}",
        host,
        port,
        open_to=unguarded if settings.api_key is None else None,
    )
    # SIGTERM (docker stop, systemd, a pod ending) stops it as Ctrl-C does; otherwise Ray's
    # own handler would end the process with a stack dump and leave the app deployed
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        while True:
            time.sleep(3600)
    finally:  # Ctrl-C (KeyboardInterrupt): the CLI prints "interrupted"
        deployment.shutdown(stop_serve=started_ray)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _check_port_free(host: str, port: int) -> None:
    from .run import bind_socket

    bind_socket(host, port).close()


def _host_port(url: str) -> tuple[str, int]:
    host, _, rest = url.removeprefix("http://").rpartition(":")
    return host.strip("[]"), int(rest.split("/")[0])


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}")
    return value
