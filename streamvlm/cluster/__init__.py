"""Several machines: streamvlm replicas on Ray Serve sharing long-term memory.

- ``settings``: where the shared store and the session directory are (``ClusterSettings``).
- ``leases``: the session directory in Redis: owners, leases with fencing tokens.
- ``deployment``: the FastAPI app as a Ray Serve deployment, sessions routed by
  ``x-session-id``.

The shared long-term tier itself is a memory tier (``streamvlm.memory.mirror``,
``streamvlm.memory.objectstore``); ``docs/deploy.md`` says how the parts fit.
"""
