"""The REST service: HTTP in front of a `Pipeline` and a `RatingStore`, plus the web page.

    app = create_app(Pipeline.load("runs/default"), RatingStore("runs/default/serving/..."))
    uvicorn.run(app, host="127.0.0.1", port=8000)      # or `recfunnel serve RUN_DIR`

Endpoints (OpenAPI docs at /docs):
    GET  /health                              liveness and what is loaded
    GET  /users/{id}/recommendations          final list + the funnel trace (serving/trace.py)
    POST /users/{id}/ratings                  record ratings: the next request reads them
    POST /recommendations                     a visitor's list from an ad-hoc history
    GET  /items?query=&limit=                 title search
    GET  /metrics                             Prometheus text: counts, p50/p99 per endpoint
    GET  /                                    the page that shows the funnel (static/)

This module only translates HTTP: the stage logic is the funnel's, the history merge is the
Pipeline's, storage is the store's. Bad input is a 4xx with a message, never a 500.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from importlib.resources import files
from typing import Annotated, Any, Literal

import orjson
from fastapi import Body, Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from recfunnel import __version__
from recfunnel.errors import ConfigError
from recfunnel.serving.metrics import Metrics
from recfunnel.serving.recommender import Pipeline
from recfunnel.serving.store import RatingStore, StoreError

MAX_BODY_BYTES = 64 * 1024  # a request body above this is refused with 413 before parsing
# The longest wait for the next part of a request body. A client that announces more bytes
# than it sends would otherwise hold its connection (and its task) open for ever: uvicorn
# times out idle keep-alive connections, not a body that stops half-way.
BODY_TIMEOUT_S = 10.0
MAX_RATINGS = 500  # ratings one call may carry (a visitor's history or one user's post)
MAX_ID = 2**31 - 1  # ids beyond int32 are no MovieLens ids, and would overflow numpy int64 math
# The longest final list a request may ask for. The re-rank runs on the event loop's one
# thread and its cost grows faster than k (DPP on ML-1M: 0.2 s at 500, 16 s at 3,300), so
# one request for the whole catalogue would stall every other request for seconds.
MAX_TOPK_FINAL = 500

UserId = Annotated[int, Path(ge=1, le=MAX_ID, description="a users.dat user id")]

# Query parameters shared by both recommendation endpoints (module level: FastAPI resolves
# the annotations by name, which a function's local aliases would defeat).
TopkRecall = Annotated[
    int | None, Query(ge=1, le=MAX_ID, description="recall candidates (run's default: 200)")
]
TopkFinal = Annotated[
    int | None,
    Query(ge=1, le=MAX_TOPK_FINAL, description="final list length (default: 20)"),
]
Lambda = Annotated[
    float | None,
    Query(
        alias="lambda",
        ge=0.0,
        le=1.0,
        description="re-rank trade-off in [0, 1]: 1 keeps the ranker's order",
    ),
]
Method = Annotated[
    Literal["ild", "mmr", "dpp"] | None,
    Query(description="re-rank method (default: the run's)"),
]
FullTrace = Annotated[
    bool,
    Query(
        alias="trace",
        description="true (default): every stage's list and each candidate's movie; false: "
        "the final list, path and latencies only (a response ~20x smaller, for services)",
    ),
]


class RatingIn(BaseModel):
    """One rating: a movie of the catalogue and a whole number of stars."""

    model_config = ConfigDict(extra="forbid")
    movie_id: int = Field(strict=True, ge=1, le=MAX_ID, description="movies.dat movie id")
    rating: int = Field(strict=True, ge=1, le=5, description="stars, 1..5")


class RatingsIn(BaseModel):
    """A list of ratings, each movie at most once."""

    model_config = ConfigDict(extra="forbid")
    ratings: list[RatingIn] = Field(max_length=MAX_RATINGS)

    @model_validator(mode="after")
    def _distinct(self) -> RatingsIn:
        ids = [r.movie_id for r in self.ratings]
        if len(set(ids)) != len(ids):
            repeated = sorted({m for m in ids if ids.count(m) > 1})[:10]
            raise ValueError(f"each movie may be rated once per call; repeated: {repeated}")
        return self


def _finite(value: Any) -> Any:
    """`value` (decoded JSON) with each NaN or infinity replaced by its name ("nan", "inf",
    "-inf"). Python's JSON parser reads the literals NaN and Infinity (and 1e999 as inf);
    a 422 that echoes such an input must still be encodable as strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


async def _json_body(request: Request) -> None:
    """Refuses a body not declared as JSON: FastAPI would hand its raw text to the model,
    whose error ("a valid dictionary") would not say that the Content-Type is wrong."""
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        raise HTTPException(
            422, f"the body must be JSON sent with Content-Type: application/json, got {media!r}"
        )


class FastJSON(Response):
    """A JSON body by orjson: a full trace (~53 KB, ~1,000 small dicts) takes ~0.1 ms
    against ~0.7 ms with the standard library's encoder behind JSONResponse. NaN and
    infinities become null (the trace already maps them to None)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class BodyTooLarge(HTTPException):
    """The request body is over the cap. An HTTPException, so that when it is raised while
    FastAPI reads the body it becomes this 413 (FastAPI turns other errors there into 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body too large: at most {limit} bytes")


class BodyTimeout(HTTPException):
    """The client stopped sending its body. A 408 that closes the connection: the rest of
    the announced body may still arrive, and would be read as the next request."""

    def __init__(self, seconds: float) -> None:
        super().__init__(
            408,
            f"request body incomplete: no more of it arrived within {seconds:g} s",
            headers={"Connection": "close"},
        )


class BodyLimitAndMetrics:
    """ASGI middleware: refuses bodies over `limit` bytes (413), whether announced by
    Content-Length or streamed, and bodies that stall for `body_timeout` seconds (408), and
    times every request for /metrics by route template."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        limit: int = MAX_BODY_BYTES,
        body_timeout: float = BODY_TIMEOUT_S,
    ) -> None:
        self.app, self.metrics, self.limit = app, metrics, limit
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        clock = time.perf_counter()
        status = {"code": 500, "started": False}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
            await send(message)

        seen, body_done = 0, False

        async def receive_wrapper() -> Message:
            nonlocal seen, body_done
            if body_done:  # after the body, a wait for the disconnect may last any time
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout)
            except TimeoutError:
                raise BodyTimeout(self.body_timeout) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
                body_done = not message.get("more_body", False)
            else:
                body_done = True  # http.disconnect
            return message

        length = dict(scope.get("headers", [])).get(b"content-length")
        try:
            if length is not None and (not length.isdigit() or int(length) > self.limit):
                raise BodyTooLarge(self.limit)  # refused before a byte of it is read
            await self.app(scope, receive_wrapper, send_wrapper)
        except BodyTooLarge as error:
            if status["started"]:
                raise
            response = JSONResponse({"detail": error.detail}, status_code=413)
            await response(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(
                scope.get("method", ""), endpoint, status["code"], time.perf_counter() - clock
            )


def create_app(
    pipeline: Pipeline,
    store: RatingStore,
    *,
    metrics: Metrics | None = None,
    body_timeout: float = BODY_TIMEOUT_S,
) -> Any:
    """The FastAPI application serving `pipeline` with live ratings from `store`;
    `body_timeout`: seconds a request body may stall before a 408."""
    metrics = metrics or Metrics()
    # The recommendation endpoints are `async def`: their work (the fast path, ~2 ms of
    # Python and small numpy calls under the GIL) runs on the event loop's thread, one
    # request at a time, as a lock around it did before. A plain `def` endpoint would hop to
    # a pool thread and back per request; with 8 clients that cost throughput, made each
    # stage's clock run while other threads held the GIL, and grew RSS by 6-8 % in 30 s
    # (per-thread malloc arenas). Parallelism comes from worker processes (`--workers`).

    app = FastAPI(
        title="recfunnel",
        version=__version__,
        description="A multi-stage recommender on MovieLens-1M (recall -> pre-rank -> rank "
        "-> re-rank), with the whole funnel trace of every answer.",
    )
    app.add_middleware(BodyLimitAndMetrics, metrics=metrics, body_timeout=body_timeout)
    app.state.pipeline, app.state.store, app.state.metrics = pipeline, store, metrics

    @app.exception_handler(ConfigError)
    async def _config_error(request: Request, error: ConfigError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=422)

    @app.exception_handler(StoreError)
    async def _store_error(request: Request, error: StoreError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=503)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler, except that a NaN or infinity in the body (which it echoes
        # as the input) no longer makes the reply fail to encode, a 500.
        return JSONResponse({"detail": _finite(jsonable_encoder(error.errors()))}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> Response:
        # FastAPI answers a body that json.loads cannot even scan (bytes that are not UTF-8,
        # arrays nested past the recursion limit) with a bare 400 "error parsing the body";
        # it is bad input like any other malformed JSON, a 422 that says what is wrong.
        cause = error.__cause__
        if error.status_code == 400 and isinstance(cause, UnicodeDecodeError | RecursionError):
            why = (
                "it is not UTF-8" if isinstance(cause, UnicodeDecodeError) else "nested too deeply"
            )
            return JSONResponse({"detail": f"the body is not valid JSON: {why}"}, status_code=422)
        return await http_exception_handler(request, error)

    def recommend(
        user_id: int | None,
        extra: list[tuple[int, int, int]],
        topk_recall: int | None,
        topk_final: int | None,
        lambda_mmr: float | None,
        method: str | None,
        full: bool = True,
    ) -> FastJSON:
        trace = pipeline.recommend_trace(
            user_id,
            extra,
            topk_recall=topk_recall,
            topk_final=topk_final,
            lambda_mmr=lambda_mmr,
            method=method,
        )
        for stage, ms in trace.latency_ms.items():
            if stage != "total":
                metrics.observe_stage(stage, ms / 1000)
        return FastJSON(trace.to_dict(full=full))

    # Load balancers and uptime checkers often probe with HEAD (a 405 reads as down).
    @app.head("/health", include_in_schema=False)
    def health_head() -> Response:
        return Response()

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Liveness and what the server holds."""
        return {
            "status": "ok",
            "version": __version__,
            "run_dir": str(pipeline.run.path),
            "users": len(pipeline.user_ids),
            "items": len(pipeline.funnel.item_ids),
            "live_ratings": store.count(),
            "worker": os.getpid(),  # which process answered (`recfunnel serve --workers`)
            # What a request that sets nothing gets: the page starts its controls here.
            "defaults": {
                "topk_recall": pipeline.funnel.sizes.topk_recall,
                "topk_final": pipeline.funnel.sizes.topk_final,
                "lambda": pipeline.funnel["rerank"].config.lambda_mmr,
                "method": pipeline.funnel["rerank"].config.method,
            },
        }

    @app.get("/users/{user_id}/recommendations", response_class=FastJSON)
    async def user_recommendations(
        user_id: UserId,
        topk_recall: TopkRecall = None,
        topk_final: TopkFinal = None,
        lambda_mmr: Lambda = None,
        method: Method = None,
        full: FullTrace = True,
    ) -> FastJSON:
        """The final list and the funnel trace for a user: their known history plus every
        rating posted to this service. An id outside users.dat gets the popularity list."""
        live = store.history(user_id) if pipeline.has_user(user_id) else []
        return recommend(user_id, live, topk_recall, topk_final, lambda_mmr, method, full)

    @app.post("/users/{user_id}/ratings", dependencies=[Depends(_json_body)])
    def post_ratings(user_id: UserId, body: RatingsIn) -> dict[str, Any]:
        """Record ratings for a users.dat user; stored (and committed) before the reply, read
        as history by their next request."""
        if not pipeline.has_user(user_id):
            raise HTTPException(404, f"unknown user id {user_id} (not in users.dat)")
        if not body.ratings:
            raise HTTPException(422, "ratings must hold at least one rating")
        pipeline.positions_of([r.movie_id for r in body.ratings])  # unknown ids: 422
        stored = store.add(
            user_id,
            [(r.movie_id, r.rating) for r in body.ratings],
            floor=pipeline.last_rating_time(user_id),
        )
        return {
            "user_id": user_id,
            "stored": [{"movie_id": m, "rating": r, "timestamp": t} for m, r, t in stored],
            "live_ratings": len(store.history(user_id)),
        }

    @app.post("/recommendations", response_class=FastJSON, dependencies=[Depends(_json_body)])
    async def visitor_recommendations(
        body: Annotated[RatingsIn, Body(description="the visitor's ratings so far")],
        topk_recall: TopkRecall = None,
        topk_final: TopkFinal = None,
        lambda_mmr: Lambda = None,
        method: Method = None,
    ) -> FastJSON:
        """The list and trace for an anonymous visitor whose history is the body's ratings
        (nothing is stored); no ratings gives the cold list."""
        stamp = max(int(time.time()), pipeline.funnel.now)
        extra = [(r.movie_id, r.rating, stamp) for r in body.ratings]
        return recommend(None, extra, topk_recall, topk_final, lambda_mmr, method)

    @app.get("/items")
    def items(
        query: Annotated[str, Query(max_length=200, description="part of a title")] = "",
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
    ) -> dict[str, Any]:
        """Catalogue movies whose title contains `query` (case-insensitive), most rated in
        train first; an empty query lists the most rated."""
        return {"query": query, "items": pipeline.search(query, limit)}

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics_text() -> PlainTextResponse:
        """Request counts and p50 / p99 latency per endpoint and per stage (Prometheus)."""
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    static = files("recfunnel.serving").joinpath("static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(str(static.joinpath("index.html")), media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    return app
