"""An LLM judge behind any OpenAI-compatible ``/v1/chat/completions`` endpoint.

Open-ended benchmarks (RVS-Ego, RVS-Movie) are scored by asking a language model whether a
predicted answer matches the ground truth. The published numbers used OpenAI's
gpt-3.5-turbo, which is retired; a ``Judge`` asks whatever model the user serves (their own
vLLM, an OpenAI-compatible cloud, ``streamvlm serve``) the same question, worded as the
official scripts word it, and parses the reply the way they parse it. The model, the
endpoint and the prompt's name are recorded beside every score (``Judge.describe``), since
a judged score means nothing without them.

The prompt (``CORRECTNESS_PROMPT``) is the Video-ChatGPT correctness prompt that
Flash-VStream's ``eval_activitynet_qa.py`` sends for RVS (github IVGSZ/Flash-VStream,
Flash-VStream-Qwen/eval_activitynet_qa.py and
Flash-VStream-LLaVA/flash_vstream/eval_video/eval_activitynet_qa.py) and ReKV's
``video_qa/eval/eval_open_ended.py`` (github Becomebright/ReKV) sends unchanged:

- system: "You are an intelligent chatbot designed for evaluating the correctness of
  generative outputs for question-answer pairs. Your task is to compare the predicted
  answer with the correct answer and determine if they match meaningfully. ..." followed by
  three instructions (meaningful match; synonyms or paraphrases count; evaluate
  correctness);
- user: "Please evaluate the following video-based question-answer pair:" then
  ``Question:``, ``Correct Answer:`` and ``Predicted Answer:`` lines, then the request for
  a Python dictionary string ``{'pred': 'yes'|'no', 'score': <int 0-5>}`` and nothing else.

Its exact text, with the official scripts' string joins (some sentences run together, as
they reach the judge), is built by ``correctness_messages``.

The reply is parsed as those scripts parse it (``parse_verdict``): ``ast.literal_eval`` of
the whole message must give a dict with ``'pred'`` and ``'score'``; the score is
``int(score)`` (so 4.8 counts 4); a ``pred`` containing "yes" (any case) is judged correct,
else one containing "no" wrong. A reply that is not in this form is a judge failure: the
official scripts ask again (ReKV until it parses; Flash-VStream over up to 100 rounds, then
leave the question out of the means), so ``Judge.judge`` asks up to ``attempts`` times and
then reports the failure instead of a verdict.
"""

from __future__ import annotations

import ast
import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ...errors import StreamVLMError

PROMPT_NAME = "video-chatgpt-correctness"
# the wording as Flash-VStream (2024) and ReKV (ICLR 2025) send it; bump when it changes
PROMPT_VERSION = "flash-vstream-2024"

# Flash-VStream-Qwen/eval_activitynet_qa.py sends temperature 0.002 (ReKV sends 0)
OFFICIAL_TEMPERATURE = 0.002

_SYSTEM = (
    "You are an intelligent chatbot designed for evaluating the correctness of generative outputs "
    "for question-answer pairs. "
    "Your task is to compare the predicted answer with the correct answer and determine if they match "
    "meaningfully. Here's how you can accomplish the task:"
    "------"
    "##INSTRUCTIONS: "
    "- Focus on the meaningful match between the predicted answer and the correct answer.\n"
    "- Consider synonyms or paraphrases as valid matches.\n"
    "- Evaluate the correctness of the prediction compared to the answer."
)

_REQUEST = (
    "Provide your evaluation only as a yes/no and score where the score is an integer value between "
    "0 and 5, with 5 indicating the highest meaningful match. "
    "Please generate the response in the form of a Python dictionary string with keys 'pred' and "
    "'score', where value of 'pred' is  a string of 'yes' or 'no' and value of 'score' is in INTEGER, "
    "not STRING."
    "DO NOT PROVIDE ANY OTHER OUTPUT TEXT OR EXPLANATION. Only provide the Python dictionary string. "
    "For example, your response should look like this: {'pred': 'yes', 'score': 4.8}."
)


class JudgeError(StreamVLMError):
    """The judge's endpoint cannot be used (unreachable, refusing, not OpenAI-compatible)."""


def correctness_messages(question: str, answer: str, prediction: str) -> list[dict]:
    """The chat messages of the official correctness prompt for one question."""
    user = (
        "Please evaluate the following video-based question-answer pair:\n\n"
        f"Question: {question}\n"
        f"Correct Answer: {answer}\n"
        f"Predicted Answer: {prediction}\n\n" + _REQUEST
    )
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": user}]


@dataclass(frozen=True)
class Verdict:
    """The judge's reading of one prediction.

    ``correct``: "yes" was in its ``pred``; ``pred`` the label as counted ("yes", "no", or
    "" when it held neither, which the official scripts count in the denominator but as
    neither); ``score`` its integer 0-5 score; ``reply`` the judge's raw text. A failed
    verdict (``failure`` set: the reply was not the dictionary the prompt asks for) has no
    label and no score and is left out of the means, as the official scripts leave it out.
    """

    pred: str = ""
    score: int = 0
    reply: str = ""
    failure: str = ""

    @property
    def ok(self) -> bool:
        return not self.failure

    @property
    def correct(self) -> bool:
        return self.ok and self.pred == "yes"


def parse_verdict(reply: str) -> Verdict:
    """A judge reply read as the official scripts read it (see the module docstring)."""
    try:
        value = ast.literal_eval(reply)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return Verdict(reply=reply, failure="not a Python dictionary string")
    if not isinstance(value, dict):
        return Verdict(reply=reply, failure="not a Python dictionary string")
    # ReKV reads 'prev' where 'pred' is missing (a misspelling judges make)
    label = value.get("pred", value.get("prev"))
    if not isinstance(label, str) or "score" not in value:
        return Verdict(reply=reply, failure="no 'pred' string or no 'score'")
    try:
        score = int(value["score"])
    except (TypeError, ValueError, OverflowError):
        return Verdict(reply=reply, failure=f"score {value['score']!r} is not a number")
    lowered = label.lower()
    # the official order: "yes" first, so "yes, not quite" counts as yes
    pred = "yes" if "yes" in lowered else "no" if "no" in lowered else ""
    return Verdict(pred=pred, score=score, reply=reply)


def chat_completions_url(url: str) -> str:
    """The chat completions address of ``url``: a server's base (``http://h:8000``), its
    ``/v1`` prefix, or the full ``/v1/chat/completions`` address."""
    base = url.rstrip("/")
    if base.endswith("/chat/completions"):
        return base
    if base.endswith("/v1"):
        return base + "/chat/completions"
    return base + "/v1/chat/completions"


class Judge:
    """An LLM judge at ``url`` (any OpenAI-compatible endpoint) running ``model``.

    Args:
        url: the endpoint: a base URL, its ``/v1``, or the full chat completions address.
        model: the model name the endpoint serves (sent as ``model``, recorded in scores).
        api_key: sent as ``Authorization: Bearer <api_key>`` when given.
        timeout_s: how long one request may take.
        attempts: how many times one question is asked before its failure is reported: a
            transport error (timeout, refused connection, HTTP 5xx or 429) and a reply that is
            not in the judge format are both asked again, as the official scripts do.
        backoff_s: the wait before the second attempt, doubled for each later one.
        temperature: sent with every request (the official 0.002 by default).
        max_tokens: sent as ``max_tokens`` when given (the official scripts send none).
        extra_body: more fields merged into each request body, e.g.
            ``{"streamvlm": {"session": "<id>"}}`` for ``streamvlm serve``.
        workers: how many questions ``judge_all`` has in flight at once (the official
            scripts judge in a process pool; one at a time would take an hour over RVS).
    """

    prompt_name = PROMPT_NAME
    prompt_version = PROMPT_VERSION

    def __init__(
        self,
        url: str,
        model: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 60.0,
        attempts: int = 3,
        backoff_s: float = 1.0,
        temperature: float | None = OFFICIAL_TEMPERATURE,
        max_tokens: int | None = None,
        extra_body: Mapping | None = None,
        workers: int = 8,
    ):
        if not url or not model:
            raise JudgeError(
                "the judge needs an endpoint and a model: pass --judge-url URL --judge-model NAME"
            )
        if attempts < 1 or workers < 1:
            raise JudgeError(f"judge attempts and workers must be at least 1, got {attempts} and {workers}")
        self.url = url
        self.endpoint = chat_completions_url(url)
        self.model = model
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.extra_body = dict(extra_body or {})
        self.workers = workers

    def describe(self) -> dict:
        """What a judged score must be reported with: the judge's model, endpoint and prompt."""
        return {
            "model": self.model,
            "url": self.url,
            "prompt": self.prompt_name,
            "prompt_version": self.prompt_version,
            "temperature": self.temperature,
        }

    def judge(self, question: str, answer: str, prediction: str) -> Verdict:
        """The verdict on ``prediction`` against the ground truth ``answer``.

        Raises ``JudgeError`` when the endpoint cannot be used; a reply that never comes in
        the judge format is a failed ``Verdict``, not an error.
        """
        messages = correctness_messages(question, answer, prediction)
        verdict = Verdict(failure="not asked")
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                reply = self.complete(messages)
            except _Retryable as exc:
                if attempt == self.attempts - 1:
                    raise JudgeError(
                        f"judge endpoint {self.endpoint} failed {self.attempts} times ({exc}); check "
                        "--judge-url and that the server is up"
                    ) from None
                continue
            verdict = parse_verdict(reply)
            if verdict.ok:
                return verdict
        return verdict

    def judge_all(self, items: Sequence[tuple[str, str, str]]) -> list[Verdict]:
        """The verdicts on ``(question, answer, prediction)`` triples, in their order, with
        up to ``workers`` requests in flight; the first ``JudgeError`` stops the rest."""
        if self.workers == 1 or len(items) < 2:
            return [self.judge(*item) for item in items]
        pool = ThreadPoolExecutor(min(self.workers, len(items)), thread_name_prefix="judge")
        try:
            futures = [pool.submit(self.judge, *item) for item in items]
            return [future.result() for future in futures]
        finally:
            # on an error, questions not yet sent stay unsent: the endpoint is unusable
            pool.shutdown(wait=True, cancel_futures=True)

    def complete(self, messages: list[dict]) -> str:
        """The assistant text of one chat completion (one request, no retry)."""
        body = {"model": self.model, "messages": messages, **self.extra_body}
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        request = urllib.request.Request(self.endpoint, data=json.dumps(body).encode(), method="POST")
        request.add_header("Content-Type", "application/json")
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                text = response.read().decode("utf-8", errors="replace")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", errors="replace")
            self._refuse(exc.code, detail)
            raise _Retryable(f"HTTP {exc.code}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            raise _Retryable(_reason(exc)) from None
        try:
            return json.loads(text)["choices"][0]["message"]["content"] or ""
        except (json.JSONDecodeError, KeyError, IndexError, TypeError):
            raise JudgeError(
                f"judge endpoint {self.endpoint} did not answer with an OpenAI chat completion "
                f"({text[:80]!r}); pass the address of an OpenAI-compatible server"
            ) from None

    def _refuse(self, status: int, detail: str) -> None:
        """Raise the one-line error of an HTTP refusal that asking again cannot fix."""
        if status >= 500 or status in (408, 409, 429):
            return
        detail = " ".join(detail.split())[:160]
        if status in (401, 403):
            fix = "pass the judge's API key (--judge-api-key-env NAME of the variable holding it)"
        elif status == 404:
            fix = "check --judge-url (the server's base URL, e.g. http://host:8000/v1) and --judge-model"
        else:
            fix = "check --judge-model and that the endpoint serves OpenAI chat completions"
        raise JudgeError(
            f"judge endpoint {self.endpoint} refused the request (HTTP {status}: {detail}); {fix}"
        )


class _Retryable(Exception):
    """A failure worth asking again (timeouts, refused connections, overloaded servers)."""


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    return f"{type(reason).__name__}: {reason}"[:160]
