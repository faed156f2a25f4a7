#!/bin/sh
# Entrypoint of the streamvlm images: serve $STREAMVLM_MODEL on $STREAMVLM_HOST:$STREAMVLM_PORT.
# Extra arguments go to `streamvlm serve` (e.g. --max-sessions 8 --device cuda).
set -eu
model="${STREAMVLM_MODEL:-streamvlm-tiny-synth}"
# A non-editable install carries no assets/: a bundled model's name is resolved to the
# checkpoint copied into the image (STREAMVLM_ASSETS) instead.
assets="${STREAMVLM_ASSETS:-/opt/streamvlm/assets/models}"
if [ -f "$assets/$model/config.json" ]; then
    model="$assets/$model"
fi
exec streamvlm serve \
    --model "$model" \
    --host "${STREAMVLM_HOST:-0.0.0.0}" \
    --port "${STREAMVLM_PORT:-8000}" \
    "$@"
