"""A judge served by ``rlhf-pairs serve-judge``, called over HTTP (``judge_type: remote``, ``judge: http://host:port``).

:class:`RemoteJudge` has the judge contract (``compare``), so it works in every job, in
:class:`~rlhf_pairs.rewards.PairwiseRewardFunction` and in ``rank_candidates``; when the server's judge has
per-response scores (a reward model), :meth:`RemoteJudge.from_pretrained` returns a :class:`RemoteRewardJudge`, which
also has ``score_responses``, so ranking sorts by score as it does in-process. One ``compare`` call is one request
(a tournament round stays one request), split only when its body would exceed the server's ``max_body_bytes``.

Authentication: a server started with an API key (``RLHF_PAIRS_JUDGE_API_KEY`` in its environment, or
``serve-judge --api_key``) answers only requests with ``Authorization: Bearer <key>``. The client reads the key from
``RLHF_PAIRS_JUDGE_API_KEY`` (the ``api_key`` argument overrides it) and sends it on every request (not on a
redirect); a 401 raises ``PermissionError`` naming the URL and the variable to set. The key never appears in a log
line, a ``repr``, an exception message or ``info`` (so neither in fingerprints nor in output files). Over plain
``http://`` it travels in clear text: across an untrusted network, put TLS in front of the server.

Inputs are checked before sending, with the local judge's messages. Results are the server judge's floats, exactly
(JSON floats round-trip). The client uses only the standard library (``urllib``), so training processes need no
server dependencies.

Failures: connection errors (refused, reset, closed) and 502/503/504 are retried with exponential backoff (0.5 s
doubling to 4 s) for up to ``retry_seconds``, so a restarted server is waited for; past that, a ``ConnectionError``
names the URL and the last error. A 401 raises ``PermissionError`` (above), another 4xx ``ValueError`` with the
server's message, a 500 ``RuntimeError``; a request that takes longer than ``timeout`` raises ``TimeoutError`` (it is
not re-sent: the server may still be working on it). A reply that does not hold one float per row raises
``RuntimeError``. No failure returns a number.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from rlhf_pairs.data_utils import Prompt
from rlhf_pairs.judges.base import check_pair_inputs, check_response_inputs
from rlhf_pairs.utils.http import JsonClient

API_KEY_ENV = "RLHF_PAIRS_JUDGE_API_KEY"  # the key, on the server's side and on every client's
RETRY_STATUSES = (502, 503, 504)
# The /info fields that change what a served judge says (for fingerprints of finished work).
IDENTITY_FIELDS = ("judge", "judge_type", "class", "dtype", "temperature", "max_length", "pointwise", "pairrm_format")


# Fields only some judges report (an LLM judge's prompt and served model, a local judge's and template file's
# digests): recorded only when present, so a finished run against another judge type resumes as before.
OPTIONAL_IDENTITY_FIELDS = ("template", "labels", "served_model", "judge_sha256", "judge_template_sha256")


def served_identity(info: dict) -> dict:
    """The result-changing part of a server's ``/info``."""
    identity = {key: info.get(key) for key in IDENTITY_FIELDS}
    identity.update({key: info[key] for key in OPTIONAL_IDENTITY_FIELDS if key in info})
    return identity


def check_api_key(key: str, source: str) -> None:
    """Raise ``ValueError`` (naming ``source``, never the key) unless ``key`` is printable ASCII without spaces, as
    an ``Authorization: Bearer`` token must be (a header cannot carry a newline or, portably, non-ASCII text)."""
    if not key.isascii() or not key.isprintable() or any(c.isspace() for c in key):
        raise ValueError(f"the API key from {source} must be printable ASCII without spaces (its value is not shown)")


class RemoteJudge:
    """A pair judge behind ``rlhf-pairs serve-judge`` at ``url``; see the module docstring.

    Args:
        url: the server, ``http://host:port``.
        timeout: seconds one request may take (a large batch on a busy server can take minutes).
        retry_seconds: how long to keep retrying connection errors and 502/503/504 before giving up.
        info: the server's ``/info`` (fetched when ``None``).
        expect: judge settings the caller asked for (``dtype``, ``attn_implementation``, ``temperature``,
            ``max_length``, ``batch_tokens``: a job's ``judge_*`` options): the server's judge must have them, else
            ``ValueError`` naming each difference (a client cannot change the served judge).
        api_key: the server's API key, sent as ``Authorization: Bearer`` (``""``: none); default:
            ``RLHF_PAIRS_JUDGE_API_KEY`` when set.
    """

    def __init__(
        self,
        url: str,
        timeout: float = 600.0,
        retry_seconds: float = 120.0,
        info: dict | None = None,
        expect: dict | None = None,
        api_key: str | None = None,
    ):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"a remote judge needs an http:// or https:// URL, got {url!r}")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retry_seconds = retry_seconds
        source = API_KEY_ENV if api_key is None else "the `api_key` argument"
        key = (os.environ.get(API_KEY_ENV) if api_key is None else api_key) or None  # never shown
        if key:
            check_api_key(key, source)
        self._has_key = bool(key)
        self._client = JsonClient(
            self.url, api_key=key, timeout=timeout, retry_seconds=retry_seconds, retry_statuses=RETRY_STATUSES,
            backoff=(0.5, 4.0), on_unauthorized=self._unauthorized,
            timeout_hint="; raise `timeout` or send smaller batches",
            unreachable_hint="; is `rlhf-pairs serve-judge` running there?",
        )  # fmt: skip
        self.info = info if info is not None else self._client.request("GET", "/info")
        self.max_body_bytes = int(self.info.get("max_body_bytes") or 0) or None
        expect = dict(expect or {})
        if self.info.get("judge_type") == "pairrm":  # PairRM's budgets are its card's: a local load ignores it too
            expect.pop("max_length", None)
        differences = [
            f"{key}={value!r} (the server's: {self.info.get(key)!r})"
            for key, value in expect.items()
            if self.info.get(key) != value
        ]
        if differences:
            raise ValueError(
                f"judge server {self.url} serves {self.info.get('judge')!r} with other settings than asked: "
                f"{', '.join(differences)}; judge settings belong to the server (serve-judge --judge_... options): "
                "unset them here or restart the server with them"
            )
        self.num_requests = 0  # /compare and /score requests sent (tests check one per tournament round)

    @classmethod
    def from_pretrained(cls, url: str, **kwargs: Any) -> RemoteJudge:
        """Connect to the server at ``url``: a :class:`RemoteRewardJudge` when its judge is pointwise, else a
        :class:`RemoteJudge`. Waits (up to ``retry_seconds``) for a server that is still starting."""
        judge = RemoteJudge(url, **kwargs)
        return RemoteRewardJudge(url, info=judge.info, **kwargs) if judge.info.get("pointwise") else judge

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, judge={self.info.get('judge')!r})"

    def compare(self, prompts: Sequence[Prompt], responses_a: Sequence[str], responses_b: Sequence[str]) -> list[float]:
        """P(responses_a[i] is better than responses_b[i] for prompts[i]), from the server's judge."""
        check_pair_inputs(prompts, responses_a, responses_b)
        return self._rows("/compare", ("prompts", "responses_a", "responses_b"), (prompts, responses_a, responses_b))

    def _rows(self, path: str, keys: tuple[str, ...], columns: tuple[Sequence, ...]) -> list[float]:
        """One request for all rows, or halves of it while its body exceeds the server's limit."""
        body = json.dumps(dict(zip(keys, map(list, columns))), ensure_ascii=False).encode()
        n = len(columns[0])
        if self.max_body_bytes and len(body) > self.max_body_bytes:
            if n == 1:
                raise ValueError(
                    f"one row is {len(body)} bytes, over the judge server's limit of {self.max_body_bytes} "
                    "(serve-judge --max_body_mb)"
                )
            half = n // 2
            return self._rows(path, keys, tuple(c[:half] for c in columns)) + self._rows(
                path, keys, tuple(c[half:] for c in columns)
            )
        key = "probabilities" if path == "/compare" else "scores"
        reply = self._client.request("POST", path, body)
        values = reply.get(key) if isinstance(reply, dict) else None
        if not isinstance(values, list) or len(values) != n:
            got = len(values) if isinstance(values, list) else type(values).__name__
            raise RuntimeError(f"judge server {self.url}{path} answered {got} {key} for {n} rows")
        self.num_requests += 1
        return [float(v) for v in values]

    def _unauthorized(self, path: str, message: str) -> PermissionError:
        """A 401; the server's reply is not shown: whatever answers at the URL could echo the header."""
        what = "refused the API key" if self._has_key else "requires an API key"
        return PermissionError(
            f"judge server {self.url} {what} (401 on {path}): set {API_KEY_ENV} to the key the server was started with"
        )


class RemoteRewardJudge(RemoteJudge):
    """A :class:`RemoteJudge` whose server judge scores responses one at a time (a reward model)."""

    def score_responses(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        """The server judge's score of every (prompt, response) row."""
        check_response_inputs(prompts, responses)
        if not prompts:
            return []
        return self._rows("/score", ("prompts", "responses"), (prompts, responses))
