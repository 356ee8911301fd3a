"""A judge as an HTTP service (``rlhf-pairs serve-judge``): load a judge once, call it from every process and node.

Endpoints (JSON in, JSON out; floats round-trip exactly): ``GET /health`` (always open), ``GET /info`` (the judge,
its settings and the server's limits), ``POST /compare`` ``{"prompts", "responses_a", "responses_b"}`` ->
``{"probabilities"}``, ``POST /score`` ``{"prompts", "responses"}`` -> ``{"scores"}`` (pointwise judges; 404
otherwise). With an API key every route but ``/health`` needs ``Authorization: Bearer <key>`` (constant-time, before
the body is read; 401 otherwise, never echoing the key). Errors: 400 with the judge's own message for inputs it
refuses, 413 for a body over ``max_body_bytes``, 500 when the judge fails; the server keeps serving. Requests queue
and, with ``merge_requests``, share judge calls; ``devices`` puts one judge copy per device behind one port. How and
why (FastAPI on uvicorn, the queue, merging, several devices): ``docs/serving.md``.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' `Request` annotation at definition time.
import asyncio
import hmac
import json
import logging
from collections import deque
from dataclasses import dataclass, field

from rlhf_pairs.judges.base import check_pair_inputs, check_response_inputs
from rlhf_pairs.utils.hashing import judge_file_digests

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
OPEN_PATHS = ("/health",)  # the only route answered without the API key
ENDPOINTS = {"compare": ("prompts", "responses_a", "responses_b"), "score": ("prompts", "responses")}


class RequestError(ValueError):
    """A request the server refuses: ``status`` is the HTTP status, the message goes back as ``{"error": ...}``."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class _Job:
    kind: str  # "compare" or "score"
    columns: tuple[list, ...]
    future: asyncio.Future = field(repr=False)

    @property
    def rows(self) -> int:
        return len(self.columns[0])


def judge_info(judge, name: str, judge_type: str) -> dict:
    """What ``GET /info`` says about one loaded judge."""
    model = getattr(judge, "model", None)
    dtype = next(model.parameters()).dtype if model is not None and hasattr(model, "parameters") else None
    max_length = getattr(judge, "max_length", None)
    formatter = getattr(judge, "formatter", None)
    if max_length is None and formatter is not None:
        max_length = getattr(formatter, "max_length", None)
    return {
        "judge": name,
        "judge_type": judge_type,
        "class": f"{type(judge).__module__}.{type(judge).__qualname__}",
        "dtype": None if dtype is None else str(dtype).removeprefix("torch."),
        "attn_implementation": getattr(getattr(model, "config", None), "_attn_implementation", None),
        "max_length": max_length,
        "batch_tokens": getattr(judge, "batch_tokens", None),
        "temperature": getattr(judge, "temperature", None),
        "pointwise": callable(getattr(judge, "score_responses", None)),
        "pairrm_format": getattr(judge, "conversation_format", None),
        **_generative_identity(judge),
        # a local judge's and template file's digests, as a local judge's fingerprint records them
        **judge_file_digests(name, getattr(getattr(judge, "template", None), "name", None)),
    }


def _generative_identity(judge) -> dict:
    """An LLM judge's prompt (template name and labels) and, behind an API, its model: absent for other judges, so
    their ``/info`` (and the fingerprints recorded from it) stay as they were."""
    template = getattr(judge, "template", None)
    if not hasattr(template, "labels") or (template.name, tuple(template.labels)) == ("rlhflow", ("A", "B")):
        return {}  # not an LLM judge, or the pair LM's own prompt
    info = {"template": template.name, "labels": list(template.labels)}
    if isinstance(getattr(judge, "model", None), str):  # OpenAIJudge: the served model's name
        info["served_model"] = judge.model
    return info


def parse_request(body: bytes, kind: str) -> tuple[list, ...]:
    """The columns of a ``/compare`` or ``/score`` body, checked as the local judge checks them.

    Raises :class:`RequestError` (400) for malformed JSON, a body that is not an object, missing keys, or inputs the
    judge would refuse (mismatched lengths, non-string responses, malformed prompts), with the judge's message."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RequestError(f"malformed JSON: {err}") from None
    keys = ENDPOINTS[kind]
    if not isinstance(payload, dict):
        raise RequestError(f"the body must be a JSON object with keys {list(keys)}, got {type(payload).__name__}")
    missing = [key for key in keys if key not in payload]
    if missing:
        raise RequestError(f"the body lacks key(s) {missing}; /{kind} needs {list(keys)}, got {sorted(payload)}")
    columns = tuple(payload[key] for key in keys)
    try:
        if kind == "compare":
            check_pair_inputs(*columns)
        else:
            check_response_inputs(*columns)
    except ValueError as err:
        raise RequestError(str(err)) from None
    return columns


class JudgeServer:
    """The queue and workers behind the endpoints: one worker per loaded judge (device), see the module docstring.

    Args:
        judges: one loaded judge per device (the same model on each).
        info: what ``/info`` reports (see :func:`judge_info`), completed with the server's settings.
        merge_requests: merge queued requests of one kind into one judge call.
        max_batch_rows: most rows one merged call takes (a single larger request still runs whole).
        max_body_bytes: the largest request body accepted (413 above).
    """

    def __init__(
        self,
        judges: list,
        info: dict,
        merge_requests: bool = True,
        max_batch_rows: int = 8192,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ):
        if not judges:
            raise ValueError("a judge server needs at least one loaded judge")
        self.judges = judges
        self.merge_requests = merge_requests
        self.max_batch_rows = max_batch_rows
        self.max_body_bytes = max_body_bytes
        self.info = {
            **info,
            "workers": len(judges),
            "merge_requests": merge_requests,
            "max_batch_rows": max_batch_rows,
            "max_body_bytes": max_body_bytes,
        }
        self.pointwise = info.get("pointwise", False)
        self._pending: deque[_Job] = deque()
        self._ready: asyncio.Condition | None = None
        self._tasks: list[asyncio.Task] = []
        self.calls = 0  # judge calls made (observability; tests check merging with it)
        self.requests = 0

    async def start(self) -> None:
        self._ready = asyncio.Condition()
        self._tasks = [asyncio.create_task(self._work(judge)) for judge in self.judges]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def submit(self, kind: str, columns: tuple[list, ...]) -> list[float]:
        """Queue one request and wait for its results."""
        if kind == "score" and not self.pointwise:
            raise RequestError(f"{self.info.get('class')} has no per-response scores; use /compare", status=404)
        job = _Job(kind, columns, asyncio.get_running_loop().create_future())
        async with self._ready:
            self._pending.append(job)
            self._ready.notify()
        self.requests += 1
        return await job.future

    def _take(self) -> list[_Job]:
        """The oldest job and, when merging, the queued jobs of its kind behind it within ``max_batch_rows``."""
        first = self._pending.popleft()
        jobs, rows = [first], first.rows
        if self.merge_requests:
            for job in list(self._pending):
                if job.kind == first.kind and rows + job.rows <= self.max_batch_rows:
                    self._pending.remove(job)
                    jobs.append(job)
                    rows += job.rows
        return jobs

    async def _work(self, judge) -> None:
        while True:
            async with self._ready:
                await self._ready.wait_for(lambda: bool(self._pending))
                jobs = self._take()
            if len(jobs) > 1:
                try:
                    results = await self._run(judge, jobs)
                except Exception:  # noqa: BLE001 - one request's rows broke the merged call: each on its own
                    for job in jobs:
                        await self._answer(judge, [job])
                    continue
                _deliver(jobs, results)
            else:
                await self._answer(judge, jobs)

    async def _run(self, judge, jobs: list[_Job]) -> list[float]:
        columns = tuple([value for job in jobs for value in job.columns[c]] for c in range(len(jobs[0].columns)))
        results = await asyncio.to_thread(_call, judge, jobs[0].kind, columns)
        self.calls += 1
        return results

    async def _answer(self, judge, jobs: list[_Job]) -> None:
        """One judge call for ``jobs``; its results, or its error, go to every job's future. Never raises (but for
        cancellation): a worker outlives any failure of the judge, so the server keeps serving."""
        try:
            results = await self._run(judge, jobs)
        except asyncio.CancelledError:
            raise
        except BaseException as err:  # noqa: BLE001 - SystemExit or KeyboardInterrupt from a judge must not kill us
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(err if isinstance(err, Exception) else RuntimeError(repr(err)))
            return
        _deliver(jobs, results)


def _deliver(jobs: list[_Job], results: list[float]) -> None:
    start = 0
    for job in jobs:
        if not job.future.done():  # a client that went away cancelled its future
            job.future.set_result(results[start : start + job.rows])
        start += job.rows


def _call(judge, kind: str, columns: tuple[list, ...]) -> list[float]:
    """The judge's values for ``columns``, as finite floats. Raises ``RuntimeError`` for a value that is not one
    (JSON has no NaN) or for a ``StopIteration`` from the judge (asyncio cannot carry it out of a thread)."""
    from rlhf_pairs.ranking import check_probabilities, check_scores

    try:
        values = judge.compare(*columns) if kind == "compare" else judge.score_responses(*columns)
    except StopIteration as err:
        raise RuntimeError(f"the judge raised StopIteration: {err!r}") from None
    check = check_probabilities if kind == "compare" else check_scores
    try:  # the judge's own checks: a probability in [0, 1] (a finite score), no string, one per row
        return check(judge, values, len(columns[0]))
    except ValueError as err:  # the judge is broken, not the request
        raise RuntimeError(str(err)) from None


class BearerKeyRequired:
    """ASGI middleware: every HTTP request but to :data:`OPEN_PATHS` must carry ``Authorization: Bearer <api_key>``.

    The header is compared in constant time (``hmac.compare_digest`` on bytes) before anything reads the body; a
    missing or wrong key gets 401, ``WWW-Authenticate: Bearer`` and ``{"error": ...}``, whatever the route (an
    unknown one included), and the application never sees the request. The key is in no ``repr`` and no message.
    """

    def __init__(self, app, api_key: str):
        self.app = app
        self._key = api_key.encode()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.app!r})"

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        tokens = [value for name, value in scope["headers"] if name.lower() == b"authorization"]
        scheme, _, token = tokens[0].partition(b" ") if len(tokens) == 1 else (b"", b"", b"")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._key):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        error = "wrong API key" if tokens else "this judge server needs an API key"
        body = json.dumps({"error": f"{error}: send the header `Authorization: Bearer <key>`"}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", b"Bearer"),
        ]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def create_app(server: JudgeServer, api_key: str | None = None):
    """The FastAPI application serving ``server`` (see the module docstring for the endpoints), behind
    :class:`BearerKeyRequired` when ``api_key`` is set."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    @asynccontextmanager
    async def lifespan(app):
        await server.start()
        yield
        await server.stop()

    app = FastAPI(title="rlhf-pairs judge", lifespan=lifespan)

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > server.max_body_bytes:
            raise RequestError(f"the body has {declared} bytes, over the limit of {server.max_body_bytes}", 413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > server.max_body_bytes:
                raise RequestError(f"the body is over the limit of {server.max_body_bytes} bytes", 413)
            chunks.append(chunk)
        return b"".join(chunks)

    async def handle(request: Request, kind: str, key: str) -> JSONResponse:
        try:
            columns = parse_request(await read_body(request), kind)
            values = await server.submit(kind, columns)
        except RequestError as err:
            return JSONResponse({"error": str(err)}, status_code=err.status)
        except ValueError as err:  # the judge refused the input
            return JSONResponse({"error": str(err)}, status_code=400)
        except Exception as err:  # noqa: BLE001 - the judge failed; the server keeps serving
            logger.exception("judge call failed")
            return JSONResponse({"error": f"{type(err).__name__}: {err}"}, status_code=500)
        return JSONResponse({key: values})

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/info")
    async def info():
        return {**server.info, "requests": server.requests, "judge_calls": server.calls}

    @app.post("/compare")
    async def compare(request: Request):
        return await handle(request, "compare", "probabilities")

    @app.post("/score")
    async def score(request: Request):
        return await handle(request, "score", "scores")

    # Wrapped rather than added with app.add_middleware, whose Middleware entries show their arguments in a repr.
    return BearerKeyRequired(app, api_key) if api_key else app


def serve(server: JudgeServer, host: str, port: int, log_level: str = "info", api_key: str | None = None) -> None:
    """Run ``server`` with uvicorn until interrupted; with ``api_key``, only for requests that carry it."""
    try:
        import uvicorn
    except ImportError as err:
        raise ImportError("serve-judge needs the serve extra: pip install 'rlhf-pairs[serve]'") from err
    uvicorn.run(create_app(server, api_key), host=host, port=port, log_level=log_level)
