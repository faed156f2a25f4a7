"""Issue 16's first-contact check: a websocket client written from docs/protocol.md alone.

It starts ``streamvlm serve --model streamvlm-tiny-synth --port 0`` (or uses ``--server``),
then, ``--runs`` times: creates a session, sends every frame of assets/shapes.mp4 sampled
at 1 fps as fast as the socket takes them, asks "What digit did the diamond show?",
closes, deletes the session, and prints the answer and the span it attended. The right
answer is 7.

    PYTHONPATH=. python scripts/raw_client_shapes.py --runs 10
    PYTHONPATH=. python scripts/raw_client_shapes.py --runs 10 --no-wait   # the old behaviour

Exit code 0 when every run answered 7.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import re
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from PIL import Image
from websockets.asyncio.client import connect

from streamvlm.ingest import FileSource, Sampler

REPO = Path(__file__).resolve().parents[1]
QUESTION = "What digit did the diamond show?"


def frames(video: Path, fps: float) -> list[tuple[bytes, float]]:
    out = []
    for frame in Sampler(fps).sample(FileSource(video)):
        buffer = io.BytesIO()
        Image.fromarray(frame.rgb).save(buffer, format="JPEG", quality=90)
        out.append((buffer.getvalue(), frame.t))
    return out


def rest(base: str, method: str, path: str, body: bytes | None = None, token: str | None = None) -> dict:
    request = urllib.request.Request(base + path, data=body, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


async def one_run(base: str, sent: list[tuple[bytes, float]], options: dict) -> dict:
    session = rest(base, "POST", "/v1/sessions", b"{}")
    headers = {"Authorization": f"Bearer {session['token']}"}
    done: dict = {}
    async with connect(base.replace("http", "ws", 1) + session["stream"], additional_headers=headers) as ws:
        for jpeg, t in sent:
            await ws.send(struct.pack("<4sd", b"SVF1", t) + jpeg)
        question = {"type": "question", "id": "q1", "text": QUESTION}
        await ws.send(json.dumps(question | ({"options": options} if options else {})))
        await ws.send(json.dumps({"type": "close"}))
        async for raw in ws:
            message = json.loads(raw)
            if message["type"] in ("answer.done", "error"):
                done = message
    rest(base, "DELETE", f"/v1/sessions/{session['id']}", token=session["token"])
    return done


def start_server() -> tuple[subprocess.Popen, str]:
    command = [
        sys.executable,
        "-m",
        "streamvlm",
        "serve",
        "--model",
        "streamvlm-tiny-synth",
        "--port",
        "0",
        "--log-level",
        "warning",
    ]
    server = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True)
    for line in server.stderr:
        found = re.search(r"on (http://\S+)", line)
        if found:
            base = found.group(1).rstrip(")")
            break
    else:
        raise SystemExit("the server did not start")
    for _ in range(300):  # the port is bound before the app starts: wait for /health
        try:
            rest(base, "GET", "/health")
            return server, base
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the server did not answer /health")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--server", help="http://host:port of a running server (default: start one)")
    parser.add_argument("--video", type=Path, default=REPO / "assets" / "shapes.mp4")
    parser.add_argument("--no-wait", action="store_true", help='ask with {"wait": false}')
    args = parser.parse_args()
    sent = frames(args.video, 1.0)
    server, base = (None, args.server) if args.server else start_server()
    right = 0
    try:
        for run in range(args.runs):
            done = asyncio.run(one_run(base, sent, {"wait": False} if args.no_wait else {}))
            text = done.get("text", done.get("message"))
            spans = [(s["t_start"], s["t_end"]) for s in done.get("spans", [])]
            right += text == "7"
            print(f"run {run + 1}: {text!r} attended {spans} dropped {done.get('frames_dropped')}")
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
    print(f"{right}/{args.runs} answered 7")
    return 0 if right == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
