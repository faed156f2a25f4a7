#!/bin/sh
# Entrypoint of the streamvlm images: serve $STREAMVLM_MODEL on $STREAMVLM_HOST:$STREAMVLM_PORT.
# Extra arguments go to `streamvlm serve` (e.g. --max-sessions 8 --device cuda).
set -eu
# A bundled model's name (the default) resolves to the checkpoint the installed package carries.
model="${STREAMVLM_MODEL:-streamvlm-tiny-synth}"
exec streamvlm serve \
    --model "$model" \
    --host "${STREAMVLM_HOST:-0.0.0.0}" \
    --port "${STREAMVLM_PORT:-8000}" \
    "$@"
