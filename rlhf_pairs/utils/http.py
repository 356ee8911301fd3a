"""JSON requests to a judge server with bounded retries: the one client loop of ``RemoteJudge`` (``serve-judge``) and
``OpenAIJudge`` (any OpenAI-compatible server). Standard library only, so training processes need nothing more."""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection
from typing import Any

logger = logging.getLogger(__name__)


class JsonClient:
    """Requests to the server at ``base_url``; see :meth:`request` for what is retried and what is raised.

    Args:
        base_url: ``http://`` or ``https://`` address; paths are appended to it.
        api_key: sent as ``Authorization: Bearer`` (an unredirected header: a redirect elsewhere does not carry it);
            never in a message, log line or ``repr``.
        timeout: seconds one request may take; retry_seconds: how long to keep retrying.
        retry_statuses: HTTP statuses retried like connection errors (``Retry-After`` honoured, at most a minute).
        backoff: (first delay, longest delay) in seconds, doubling in between.
        on_unauthorized: builds the exception for a 401 from (path, the server's message with the key blanked);
            ``None``: a 401 is refused like any other 4xx.
        timeout_hint, unreachable_hint: appended to the timeout and give-up messages.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        timeout: float,
        retry_seconds: float,
        retry_statuses: Collection[int],
        backoff: tuple[float, float],
        on_unauthorized: Callable[[str, str], Exception] | None = None,
        timeout_hint: str = "",
        unreachable_hint: str = "",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key or None
        self.timeout = timeout
        self.retry_seconds = retry_seconds
        self.retry_statuses = frozenset(retry_statuses)
        self.backoff = backoff
        self.on_unauthorized = on_unauthorized
        self.timeout_hint = timeout_hint
        self.unreachable_hint = unreachable_hint

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    def request(self, method: str, path: str, body: bytes | None = None) -> Any:
        """The JSON reply of one request. Connection errors and :attr:`retry_statuses` are retried with backoff for
        up to :attr:`retry_seconds`, then ``ConnectionError`` names the URL and the last error. A 401 raises what
        ``on_unauthorized`` builds; another 4xx ``ValueError`` with the server's message, another status
        ``RuntimeError``; a request slower than :attr:`timeout` ``TimeoutError`` (not re-sent: the server may still be
        working on it)."""
        deadline = time.monotonic() + self.retry_seconds
        delay, longest = self.backoff
        tries = 0
        while True:
            tries += 1
            request = urllib.request.Request(
                self.base_url + path, data=body, method=method, headers={"Content-Type": "application/json"}
            )
            if self._api_key:
                request.add_unredirected_header("Authorization", f"Bearer {self._api_key}")
            wait = None
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as err:
                message = _error_message(err)
                if self._api_key:
                    message = message.replace(self._api_key, "<api key>")
                if err.code == 401 and self.on_unauthorized is not None:
                    raise self.on_unauthorized(path, message) from None
                if err.code not in self.retry_statuses:
                    if 400 <= err.code < 500:
                        raise ValueError(
                            f"judge server {self.base_url}{path} refused the request ({err.code}): {message}"
                        ) from None
                    raise RuntimeError(f"judge server {self.base_url}{path} failed ({err.code}): {message}") from None
                last, wait = f"HTTP {err.code}: {message}", _retry_after(err)
            except TimeoutError as err:  # socket.timeout is TimeoutError since Python 3.10
                raise TimeoutError(
                    f"judge server {self.base_url}{path} did not answer within {self.timeout} s{self.timeout_hint}"
                ) from err
            except (urllib.error.URLError, ConnectionError, http.client.HTTPException) as err:
                reason = getattr(err, "reason", err)
                if isinstance(reason, TimeoutError):
                    raise TimeoutError(
                        f"judge server {self.base_url}{path} did not answer within {self.timeout} s"
                    ) from err
                last = f"{type(reason).__name__}: {reason}"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ConnectionError(
                    f"judge server {self.base_url} unreachable: {tries} tries over {self.retry_seconds:.0f} s, last: "
                    f"{last}{self.unreachable_hint}"
                )
            if tries == 1:
                logger.warning(
                    "judge server %s: %s; retrying for up to %.0f s", self.base_url, last, self.retry_seconds
                )
            time.sleep(min(wait if wait is not None else delay, remaining))
            delay = min(delay * 2, longest)


def _retry_after(err: urllib.error.HTTPError) -> float | None:
    """Seconds from a ``Retry-After`` header (seconds or an HTTP date), capped at a minute."""
    value = err.headers.get("Retry-After") if err.headers else None
    if not value:
        return None
    try:
        return min(max(float(value), 0.0), 60.0)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return min(max(parsed.timestamp() - time.time(), 0.0), 60.0) if parsed else None


def _error_message(err: urllib.error.HTTPError) -> str:
    """What the server said: its JSON ``error`` (a string, or an object's ``message``: OpenAI's schema) or ``detail``,
    else the reply's reason."""
    try:
        payload = json.loads(err.read())
        error = payload.get("error") if isinstance(payload, dict) else None
        if isinstance(error, dict):
            return str(error.get("message") or error)
        return str(error or payload.get("detail") or json.dumps(payload))[:500]
    except Exception:  # noqa: BLE001 - not JSON: say what came back
        return err.reason or f"HTTP {err.code}"
