"""A deterministic LLM judge for the RVS tests (not a test module: imported by them): a real
OpenAI-compatible ``/v1/chat/completions`` served by uvicorn on a loopback port, whose
verdicts follow from the prompt alone, so judged scores can be worked out by hand.

Its rules, on the ``Correct Answer:`` and ``Predicted Answer:`` lines of the official
prompt (first match wins):

- the prediction holds ``[garble]``: a reply that is not in the judge format;
- it holds the answer (case-insensitive, the answer's final "." dropped):
  ``{'pred': 'yes', 'score': 5}``;
- it holds ``[close]``: ``{'pred': 'yes', 'score': 4.8}`` (the official example: counts 4);
- it holds ``[neither]``: ``{'pred': 'unsure', 'score': 1}`` (neither yes nor no);
- otherwise ``{'pred': 'no', 'score': 0}``.

``fail_next`` makes the next requests fail with HTTP 503 (an overloaded server);
``api_key`` makes it refuse other bearer tokens with 401; ``bodies`` records every request.
"""

from __future__ import annotations

import re
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

MODEL = "judge-test-model"


def verdict_for(answer: str, prediction: str) -> str:
    """The reply the rules above give."""
    prediction = prediction.lower()
    if "[garble]" in prediction:
        return "The prediction looks right to me."
    if answer.lower().rstrip(".") in prediction:
        return "{'pred': 'yes', 'score': 5}"
    if "[close]" in prediction:
        return "{'pred': 'yes', 'score': 4.8}"
    if "[neither]" in prediction:
        return "{'pred': 'unsure', 'score': 1}"
    return "{'pred': 'no', 'score': 0}"


class JudgeServer:
    """The judge app served in a thread on a free loopback port."""

    def __init__(self, api_key: str | None = None):
        self.api_key = api_key
        self.fail_next = 0
        self.bodies: list[dict] = []
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self._app(), log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the judge server did not start"
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def _app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            if self.api_key is not None and request.headers.get("authorization") != f"Bearer {self.api_key}":
                return JSONResponse({"error": {"message": "invalid api key"}}, status_code=401)
            body = await request.json()
            self.bodies.append(body)
            if self.fail_next > 0:
                self.fail_next -= 1
                return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)
            if body.get("model") != MODEL:
                return JSONResponse({"error": {"message": f"no model {body.get('model')}"}}, status_code=404)
            user = body["messages"][-1]["content"]
            answer = re.search(r"^Correct Answer: (.*)$", user, re.M).group(1)
            prediction = re.search(r"^Predicted Answer: (.*)$", user, re.M).group(1)
            reply = verdict_for(answer, prediction)
            return {
                "id": f"chatcmpl-{len(self.bodies)}",
                "object": "chat.completion",
                "model": MODEL,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}
                ],
            }

        return app
