"""Several machines: what replicas share, below the servers that run them.

- ``settings``: where the shared store and the session directory are (``ClusterSettings``).
- ``leases``: the session directory in Redis: owners, leases with fencing tokens.
- ``local``: a cluster on one machine (``redis-server``, a multi-node Ray cluster) for the
  tests and ``streamvlm bench serve --ray``.

The server's side is in ``streamvlm.servers`` (``shared_sessions``: what a replica does
with shared sessions; ``ray_serve``: the app as a Ray Serve deployment routed by
``x-session-id``; ``ray_cli``: ``streamvlm serve --ray``), and the shared long-term tier is
a memory tier (``streamvlm.memory.shared_tier``, ``mirror``, ``objectstore``).
``docs/deploy.md`` says how the parts fit.
"""
