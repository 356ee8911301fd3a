"""An LLM behind any OpenAI-compatible chat completions server as a pair judge (``judge_type: openai``): vLLM,
SGLang, ``transformers serve``, OpenAI.

Each ordered pair is one ``POST {base_url}/chat/completions`` with the template's system and user messages
(:mod:`rlhf_pairs.judges.templates`), ``temperature: 0``. Verdict:

- **soft**, when the template's answer starts with the verdict (``verdict_first``: ``alpaca_eval``, ``rlhflow``, a
  user's file) and the server returns ``logprobs``: the first answer token that is a label is found in
  ``choices[0].logprobs.content`` and P(first better) = softmax(logprob(label A), logprob(label B)) / ``temperature``
  over its ``top_logprobs`` (a label missing from the top ``top_logprobs`` counts as impossible). This is OpenAI's
  and vLLM's schema (vLLM 0.11 ``ChatCompletionLogProbs``; OpenAI allows ``top_logprobs`` up to 20);
- **hard**, otherwise (or when the answer holds no label): the answer's text is parsed with the template's verdict
  rule (``[[A>B]]`` family for ``arena_hard``, ``[[A]]``/``[[B]]``/``[[C]]`` for ``mt_bench``, the label at the
  start for the others) and mapped to 1 / 0 / 0.5. An answer with no verdict is counted (``usage["unparsable"]``)
  and scored 0.5 (``on_unparsable="tie"``) or raises ``ValueError`` (``"error"``); never another number.

Both orders of every pair are asked, as for every judge, and averaged. Requests run concurrently (at most
``max_concurrency`` at a time); connection errors, 408, 409, 429 and 5xx answers are retried with exponential
backoff (honouring ``Retry-After``) for up to ``retry_seconds``, then ``ConnectionError`` names the URL. The API key
comes from the environment variable ``api_key_env`` (``OPENAI_API_KEY``, as the ``openai`` client reads it), is sent
as ``Authorization: Bearer`` and appears in no message, log line, ``repr`` or file. ``usage`` sums the servers'
token counts (``prompt_tokens``, ``completion_tokens``) and the requests and verdict kinds, for the job summaries.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch

from rlhf_pairs.data_utils import Prompt, as_messages
from rlhf_pairs.judges.base import PairwiseJudge, is_main_process
from rlhf_pairs.judges.templates import JudgeTemplate, load_template, plain_context, question_text
from rlhf_pairs.utils.http import JsonClient
from rlhf_pairs.utils.verbosity import show_progress_bars

RETRY_STATUSES = (408, 409, 429, 500, 502, 503, 504)
ON_UNPARSABLE = ("tie", "error")

_T = TypeVar("_T")


class OpenAIJudge(PairwiseJudge):
    """A chat model behind an OpenAI-compatible server as a pair judge; see the module docstring.

    Args:
        base_url: the API base, e.g. ``http://host:8000/v1`` or ``https://api.openai.com/v1``.
        model: the served model's name; ``None`` takes the server's only model (``GET /models``).
        template: the judge prompt (:func:`~rlhf_pairs.judges.templates.load_template`); default ``alpaca_eval`` (a
            one-token verdict, read from logprobs).
        labels: replaces the template's verdict labels.
        temperature: of the soft verdict's softmax (the request itself is sent with temperature 0).
        max_tokens: tokens to generate; default 5 for a verdict-first template, 1024 for one that explains first.
        top_logprobs: alternatives asked per token (OpenAI allows 0-20).
        logprobs: ask for logprobs (soft verdicts); ``False`` parses the text only.
        on_unparsable: ``"tie"`` (0.5, counted) or ``"error"``.
        max_concurrency: requests in flight at once.
        timeout: seconds one request may take; retry_seconds: how long to retry a failing server.
        api_key_env: the environment variable holding the API key (unset: no ``Authorization`` header).
    """

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        template: str | JudgeTemplate = "alpaca_eval",
        labels: tuple[str, str] | None = None,
        temperature: float = 1.0,
        max_tokens: int | None = None,
        top_logprobs: int = 20,
        logprobs: bool = True,
        on_unparsable: str = "tie",
        max_concurrency: int = 8,
        timeout: float = 300.0,
        retry_seconds: float = 300.0,
        api_key_env: str = "OPENAI_API_KEY",
        cache_size: int = 100_000,
        show_progress: bool | None = None,
    ):
        super().__init__(cache_size=cache_size)
        if temperature <= 0:
            raise ValueError(f"`temperature` must be > 0, got {temperature}")
        if on_unparsable not in ON_UNPARSABLE:
            raise ValueError(f"`on_unparsable` must be one of {ON_UNPARSABLE}, got {on_unparsable!r}")
        if max_concurrency < 1:
            raise ValueError(f"`max_concurrency` must be >= 1, got {max_concurrency}")
        self.client = OpenAIClient(base_url, api_key_env, timeout, retry_seconds)
        self.base_url = self.client.base_url
        self.template = load_template(template, labels)
        self.temperature = temperature
        self.max_tokens = max_tokens or (5 if self.template.verdict_first else 1024)
        self.top_logprobs = top_logprobs
        self.logprobs = logprobs and self.template.verdict_first
        self.on_unparsable = on_unparsable
        self.max_concurrency = max_concurrency
        self.show_progress = show_progress
        self._lock = threading.Lock()
        self.usage: Counter = Counter()
        self.model = model or only_served_model(base_url, api_key_env)

    @classmethod
    def from_pretrained(cls, base_url: str, **kwargs: Any) -> OpenAIJudge:
        """The judge at ``base_url`` (the jobs' ``judge`` option); ``kwargs`` go to the constructor."""
        return cls(base_url, **kwargs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r}, model={self.model!r}, template={self.template.name!r})"

    def messages(self, prompt: Prompt, first: str, second: str) -> list[dict]:
        """The chat messages of one ordered pair."""
        messages = as_messages(prompt)
        question = question_text(messages)
        context = plain_context(messages) if self.template.name == "rlhflow" else question
        user = self.template.render_user(question, context, first, second)
        system = [{"role": "system", "content": self.template.system}] if self.template.system else []
        return [*system, {"role": "user", "content": user}]

    def score_ordered_pairs(
        self, prompts: Sequence[Prompt], first: Sequence[str], second: Sequence[str]
    ) -> torch.Tensor:
        rows = list(zip(prompts, first, second))
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(rows))) as pool:
            results = list(progress_bar_iter(pool.map(self._score_one, rows), len(rows), self.show_progress))
        return torch.tensor(results, dtype=torch.float64)

    def _score_one(self, row: tuple[Prompt, str, str]) -> float:
        prompt, first, second = row
        body = {
            "model": self.model,
            "messages": self.messages(prompt, first, second),
            "max_tokens": self.max_tokens,
            "temperature": 0,
        }
        if self.logprobs:
            body.update(logprobs=True, top_logprobs=self.top_logprobs)
        reply = self.client.request("POST", "/chat/completions", json.dumps(body, ensure_ascii=False).encode())
        try:
            choice = reply["choices"][0]
            text = choice["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            raise RuntimeError(
                f"judge server {self.base_url}/chat/completions answered without choices[0].message: {str(reply)[:200]}"
            ) from None
        usage = reply.get("usage") or {}
        probability, kind = None, "from_logprobs"
        if self.logprobs:
            probability = soft_verdict(choice.get("logprobs"), self.template.labels, self.temperature)
        if probability is None:
            probability, kind = self.template.parse_verdict(text), "from_text"
        with self._lock:
            self.usage["requests"] += 1
            for key in ("prompt_tokens", "completion_tokens"):
                self.usage[key] += int(usage.get(key) or 0)
            self.usage[kind if probability is not None else "unparsable"] += 1
        if probability is None:
            if self.on_unparsable == "error":
                raise ValueError(
                    f"judge server {self.base_url} ({self.model}) gave no verdict of template "
                    f"{self.template.name!r} in its answer {text[:300]!r}; pass judge_on_unparsable 'tie' to count "
                    "such answers as ties"
                )
            probability = 0.5
        return probability


def soft_verdict(logprobs: object, labels: tuple[str, str], temperature: float = 1.0) -> float | None:
    """P(first better) from a chat completion's ``choices[0].logprobs`` (OpenAI's and vLLM's schema): at the first
    answer token that is a label (leading whitespace ignored), softmax over the two labels' logprobs among that
    position's token and ``top_logprobs``, divided by ``temperature``; a label not listed counts as impossible.
    ``None`` when no answer token is a label."""
    if not isinstance(logprobs, dict):
        return None
    for position in logprobs.get("content") or []:
        if not isinstance(position, dict) or str(position.get("token", "")).strip() not in labels:
            continue
        found = dict.fromkeys(labels, -math.inf)
        for alternative in [position, *(position.get("top_logprobs") or [])]:
            token = str(alternative.get("token", "")).strip()
            if token in found and alternative.get("logprob") is not None:
                found[token] = max(found[token], float(alternative["logprob"]))
        a, b = (found[label] / temperature for label in labels)
        top = max(a, b)
        return math.exp(a - top) / (math.exp(a - top) + math.exp(b - top))
    return None


class OpenAIClient(JsonClient):
    """Requests to an OpenAI-compatible API at ``base_url`` (:class:`~rlhf_pairs.utils.http.JsonClient`): the key from
    the environment variable ``api_key_env``, retries on connection errors and :data:`RETRY_STATUSES` (backoff 1 s
    doubling to 16 s, ``Retry-After`` honoured) for up to ``retry_seconds``."""

    def __init__(
        self, base_url: str, api_key_env: str = "OPENAI_API_KEY", timeout: float = 300.0, retry_seconds: float = 300.0
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"an OpenAI-compatible judge needs an http:// or https:// API base URL, got {base_url!r}")
        super().__init__(
            base_url, api_key=os.environ.get(api_key_env), timeout=timeout, retry_seconds=retry_seconds,
            retry_statuses=RETRY_STATUSES, backoff=(1.0, 16.0), on_unauthorized=self._unauthorized,
        )  # fmt: skip

    def _unauthorized(self, path: str, message: str) -> ValueError:
        return ValueError(
            f"judge server {self.base_url}{path} refused the request (401) (set the API key in the environment "
            f"variable the judge reads): {message}"
        )

    def models(self) -> list[str]:
        """The served models' names (``GET /models``)."""
        reply = self.request("GET", "/models")
        data = reply.get("data") if isinstance(reply, dict) else None
        return [m.get("id") for m in data or [] if isinstance(m, dict)]  # type: ignore[misc]  # JSON: "id" is a str


def only_served_model(base_url: str, api_key_env: str = "OPENAI_API_KEY") -> str:
    """The name of the only model served at ``base_url``; ``ValueError`` listing them when there are several."""
    client = OpenAIClient(base_url, api_key_env)
    names = client.models()
    if len(names) != 1:
        raise ValueError(
            f"judge server {client.base_url} serves {len(names)} models ({', '.join(map(str, names[:10]))}); name one "
            "with `judge_model`"
        )
    return names[0]


def progress_bar_iter(iterable: Iterable[_T], total: int, show: bool | None) -> Iterable[_T]:
    """``iterable`` with a bar of ``total`` requests (``None``: shown on the main process for 64 or more)."""
    from tqdm.auto import tqdm

    if show is None:
        show = total >= 64 and is_main_process() and show_progress_bars()
    return tqdm(iterable, total=total, desc="judge requests", unit="request", disable=not show, leave=False)
