"""The REST service: every endpoint and its bad inputs (TestClient on the smoke run), the
live rating store (concurrent writers), and durability of an acknowledged rating across a
kill -9 of the real server."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from recfunnel.cli import main
from recfunnel.serving.app import MAX_BODY_BYTES, MAX_RATINGS, MAX_TOPK_FINAL, create_app
from recfunnel.serving.recommender import Pipeline
from recfunnel.serving.store import RatingStore


@pytest.fixture(scope="module")
def pipeline(smoke_run, synthetic_ml) -> Pipeline:
    return Pipeline.load(smoke_run[0], synthetic_ml)


@pytest.fixture()
def client(pipeline: Pipeline, tmp_path: Path):
    """A fresh app (and empty rating store) per test, sharing the loaded pipeline."""
    with TestClient(create_app(pipeline, RatingStore(tmp_path / "ratings.sqlite3"))) as c:
        yield c


@pytest.fixture(scope="module")
def warm_user(pipeline: Pipeline) -> int:
    """A users.dat id with known history (the funnel path)."""
    for user in pipeline.user_ids.tolist():
        if pipeline.last_rating_time(user) > 0:
            return int(user)
    raise AssertionError("the synthetic data has no warm user")


def _final(body: dict) -> list[int]:
    return [item["movie_id"] for item in body["final"]]


def test_health(client: TestClient, pipeline: Pipeline) -> None:
    body = client.get("/health").json()
    assert body["status"] == "ok"
    assert body["items"] == len(pipeline.funnel.item_ids)
    assert body["live_ratings"] == 0
    rerank = pipeline.funnel["rerank"].config
    assert body["defaults"]["lambda"] == rerank.lambda_mmr is not None  # chosen in training
    assert body["defaults"]["method"] == rerank.method
    assert body["defaults"]["topk_final"] == pipeline.funnel.sizes.topk_final
    head = client.head("/health")  # what uptime checkers send
    assert head.status_code == 200 and head.content == b""


def test_recommendations_carry_the_whole_funnel_trace(
    client: TestClient, pipeline: Pipeline, warm_user: int
) -> None:
    response = client.get(f"/users/{warm_user}/recommendations")
    assert response.status_code == 200
    body = response.json()
    assert body["path"] == "funnel" and body["history"] > 0 and body["live_ratings"] == 0
    sizes = body["sizes"]
    stages = body["stages"]
    assert [len(stages[s]) for s in ("recall", "prerank", "rank", "rerank")] == [
        sizes["topk_recall"],
        sizes["keep"],
        sizes["keep"],
        sizes["topk_final"],
    ]
    for entries in stages.values():  # 1-based places in order, every movie described
        assert [e["position"] for e in entries] == list(range(1, len(entries) + 1))
        assert all(str(e["movie_id"]) in body["movies"] for e in entries)
    # The rank stage sorts by its own score; the final list is the re-rank's order.
    rank_scores = [e["score"] for e in stages["rank"]]
    assert rank_scores == sorted(rank_scores, reverse=True)
    assert _final(body) == [e["movie_id"] for e in stages["rerank"]]
    channels = set(pipeline.funnel["recall"].channels)
    for item in body["final"]:
        assert item["title"] and isinstance(item["genres"], list)
        assert item["channels"] and set(item["channels"]) <= channels
        assert item["positions"]["rerank"] == body["final"].index(item) + 1
        assert all(item["positions"][s] >= 1 for s in ("recall", "prerank", "rank"))
    assert 0 <= body["ild"] <= 1
    assert set(body["latency_ms"]) == {*pipeline.funnel.stages, "total"}
    # The same final list as the Python API's recommend_for_user.
    rec = pipeline.recommend_for_user(warm_user)
    assert _final(body) == [item.movie_id for item in rec.items]


def test_lambda_and_method_re_rank(client: TestClient, warm_user: int) -> None:
    url = f"/users/{warm_user}/recommendations"
    relevance = client.get(url, params={"lambda": 1.0}).json()
    diverse = client.get(url, params={"lambda": 0.0}).json()
    dpp = client.get(url, params={"lambda": 0.3, "method": "dpp"}).json()
    assert relevance["lambda"] == 1.0 and dpp["method"] == "dpp"
    # lambda 1 keeps the ranker's order; lambda 0 picks for variety.
    assert _final(relevance) == [e["movie_id"] for e in relevance["stages"]["rank"]][:20]
    assert _final(diverse) != _final(relevance)
    assert diverse["ild"] >= relevance["ild"]
    small = client.get(url, params={"topk_recall": 30, "topk_final": 5}).json()
    assert len(small["stages"]["recall"]) == 30 and len(small["final"]) == 5


def test_unknown_and_cold_users(client: TestClient, pipeline: Pipeline) -> None:
    unknown = client.get("/users/999999/recommendations").json()
    assert unknown["path"] == "popularity" and len(unknown["final"]) == 20
    cold = [u for u in pipeline.user_ids.tolist() if pipeline.last_rating_time(u) == 0]
    if cold:
        assert client.get(f"/users/{cold[0]}/recommendations").json()["path"] == "cold"


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("/users/abc/recommendations", "valid integer"),
        ("/users/1.5/recommendations", "valid integer"),
        ("/users/0/recommendations", "greater than or equal"),
        ("/users/-3/recommendations", "greater than or equal"),
        ("/users/99999999999999999999/recommendations", "less than or equal"),
        ("/users/1/recommendations?lambda=1.5", "less than or equal"),
        ("/users/1/recommendations?lambda=-0.1", "greater than or equal"),
        ("/users/1/recommendations?lambda=nan", "lambda"),
        ("/users/1/recommendations?lambda=abc", "valid number"),
        ("/users/1/recommendations?topk_recall=10&topk_final=20", "cannot exceed"),
        ("/users/1/recommendations?topk_recall=100000", "catalogue size"),
        ("/users/1/recommendations?topk_final=0", "greater than or equal"),
        # A final list is capped: DPP over the whole catalogue stalls the server for seconds.
        (
            f"/users/1/recommendations?topk_final={MAX_TOPK_FINAL + 1}",
            f"less than or equal to {MAX_TOPK_FINAL}",
        ),
        ("/users/1/recommendations?method=xgb", "mmr"),
        ("/items?limit=0", "greater than or equal"),
        ("/items?limit=1000", "less than or equal"),
    ],
)
def test_bad_queries_are_422_with_a_message(client: TestClient, path: str, needle: str) -> None:
    response = client.get(path)
    assert response.status_code == 422, response.text
    assert needle in response.text


def test_posted_ratings_change_the_next_list_at_once(
    client: TestClient, pipeline: Pipeline, warm_user: int, tmp_path: Path
) -> None:
    url = f"/users/{warm_user}/recommendations"
    before = client.get(url).json()
    rated = _final(before)[:5]
    response = client.post(
        f"/users/{warm_user}/ratings",
        json={"ratings": [{"movie_id": m, "rating": 5} for m in rated]},
    )
    assert response.status_code == 200, response.text
    stored = response.json()["stored"]
    assert [s["movie_id"] for s in stored] == rated
    # Dated after the user's known history, so the request's "now" keeps them.
    assert min(s["timestamp"] for s in stored) > pipeline.last_rating_time(warm_user)
    after = client.get(url).json()
    assert after["live_ratings"] == 5 and after["history"] == before["history"] + 5
    assert _final(after) != _final(before)
    for stage in after["stages"].values():  # rated movies are history: never candidates
        assert not set(rated) & {e["movie_id"] for e in stage}
    assert client.get("/health").json()["live_ratings"] == 5
    # Rating a movie again replaces the earlier rating (one history entry per movie).
    client.post(
        f"/users/{warm_user}/ratings", json={"ratings": [{"movie_id": rated[0], "rating": 1}]}
    )
    assert client.get(url).json()["live_ratings"] == 5


def _ratings(*pairs: tuple[object, object]) -> dict:
    return {"ratings": [{"movie_id": m, "rating": r} for m, r in pairs]}


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (_ratings((999_999, 4)), 422, "unknown movie ids"),
        (_ratings((1, 0)), 422, "greater than or equal"),
        (_ratings((1, 6)), 422, "less than or equal"),
        (_ratings((1, 4.5)), 422, "valid integer"),
        (_ratings((1, "5")), 422, "valid integer"),
        (_ratings(("1", 5)), 422, "valid integer"),
        (_ratings((1, 5), (1, 4)), 422, "rated once"),
        ({"ratings": []}, 422, "at least one"),
        ({"ratings": [{"movie_id": 1, "rating": 5, "extra": 1}]}, 422, "Extra inputs"),
        ({}, 422, "Field required"),
        (
            {"ratings": [{"movie_id": i + 1, "rating": 3} for i in range(MAX_RATINGS + 1)]},
            422,
            "at most",
        ),
    ],
)
def test_bad_ratings_are_refused(
    client: TestClient, warm_user: int, body: dict, status: int, needle: str
) -> None:
    response = client.post(f"/users/{warm_user}/ratings", json=body)
    assert response.status_code == status, response.text
    assert needle in response.text
    assert client.get("/health").json()["live_ratings"] == 0  # nothing half-stored


def test_ratings_of_unknown_users_and_bad_bodies(client: TestClient, warm_user: int) -> None:
    missing = client.post("/users/999999/ratings", json=_ratings((1, 5)))
    assert missing.status_code == 404 and "unknown user" in missing.text
    broken = client.post(
        f"/users/{warm_user}/ratings",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert broken.status_code == 422
    huge = b'{"ratings": [' + b" " * MAX_BODY_BYTES + b"]}"
    for url in (f"/users/{warm_user}/ratings", "/recommendations"):
        response = client.post(url, content=huge, headers={"content-type": "application/json"})
        assert response.status_code == 413 and "too large" in response.text

    def chunks():  # no Content-Length: the cap must hold while the body streams in
        yield b'{"ratings": ['
        for _ in range(MAX_BODY_BYTES // 1024 + 1):
            yield b" " * 1024
        yield b"]}"

    streamed = client.post(
        "/recommendations", content=chunks(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413


def test_a_body_that_stops_half_way_is_a_408_that_closes(
    pipeline: Pipeline, tmp_path: Path, warm_user: int, uvicorn_in_thread
) -> None:
    """A client announcing more body than it sends gets a 408 once the body stalls, and the
    connection closes; before, uvicorn waited for the rest for ever. Real uvicorn, a thread."""
    app = create_app(pipeline, RatingStore(tmp_path / "ratings.sqlite3"), body_timeout=0.5)
    with uvicorn_in_thread(app) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            partial = b'{"ratings": ['
            client.sendall(
                f"POST /users/{warm_user}/ratings HTTP/1.1\r\nHost: x\r\n"
                "Content-Type: application/json\r\n"
                f"Content-Length: {len(partial) + 100}\r\n\r\n".encode()
                + partial
            )
            clock = time.monotonic()
            reply = b""
            while chunk := client.recv(65536):  # b"" once the server closes the connection
                reply += chunk
            waited = time.monotonic() - clock
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), reply[:200]
        assert b"connection: close" in head.lower()
        assert "incomplete" in json.loads(body)["detail"]
        assert 0.4 < waited < 9
        # The server still answers (and a whole body well within the timeout is no 408).
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as ok:
            assert ok.status == 200


@pytest.mark.parametrize("url", ["/users/{user}/ratings", "/recommendations"])
@pytest.mark.parametrize(
    "raw",
    [
        b'{"ratings": [{"movie_id": 1, "rating": NaN}]}',
        b'{"ratings": [{"movie_id": -Infinity, "rating": 4}]}',
        b'{"ratings": [{"movie_id": 1, "rating": 1e999}]}',  # parsed as inf
        b'{"ratings": [{"movie_id": 1, "rating": 4}], "extra": Infinity}',
        b"NaN",
    ],
)
def test_non_finite_numbers_in_a_body_are_422_not_500(
    client: TestClient, warm_user: int, url: str, raw: bytes
) -> None:
    """Python's JSON parser reads NaN and Infinity; the 422 that echoes them must encode."""
    response = client.post(
        url.format(user=warm_user), content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["msg"]
    assert client.get("/health").json()["live_ratings"] == 0


@pytest.mark.parametrize("url", ["/users/{user}/ratings", "/recommendations"])
@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b'{"ratings": [{"movie_id": 1, "rating": "\xff"}]}', "not UTF-8"),  # latin-1 bytes
        (b'{"ratings": ' + b"[" * 5_000 + b"]" * 5_000 + b"}", "nested too deeply"),
    ],
)
def test_unscannable_json_is_422_with_a_reason(
    client: TestClient, warm_user: int, url: str, raw: bytes, needle: str
) -> None:
    response = client.post(
        url.format(user=warm_user), content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert needle in response.json()["detail"]


@pytest.mark.parametrize("url", ["/users/{user}/ratings", "/recommendations"])
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_body_not_sent_as_json_says_so(
    client: TestClient, pipeline: Pipeline, warm_user: int, url: str, content_type: str | None
) -> None:
    """`curl -d` sends a form content type: the 422 must name the Content-Type, not only
    say that the input is no "valid dictionary"."""
    headers = {} if content_type is None else {"content-type": content_type}
    body = json.dumps(_ratings((int(pipeline.funnel.item_ids[0]), 5))).encode()
    response = client.post(url.format(user=warm_user), content=body, headers=headers)
    assert response.status_code == 422, response.text
    assert "Content-Type: application/json" in response.json()["detail"]
    assert client.get("/health").json()["live_ratings"] == 0
    charset = {"content-type": "application/json; charset=utf-8"}
    assert client.post(url.format(user=warm_user), content=body, headers=charset).is_success


def test_visitor_recommendations(client: TestClient, pipeline: Pipeline) -> None:
    cold = client.post("/recommendations", json={"ratings": []}).json()
    assert cold["path"] == "cold" and cold["user_id"] is None and len(cold["final"]) == 20
    liked = _final(cold)[:4]
    body = client.post(
        "/recommendations", json=_ratings(*[(m, 5) for m in liked]), params={"lambda": 0.8}
    ).json()
    assert body["path"] == "funnel" and body["history"] == 4 and body["lambda"] == 0.8
    assert not set(liked) & set(_final(body))
    assert client.get("/health").json()["live_ratings"] == 0  # a visitor stores nothing
    bad = client.post("/recommendations", json=_ratings((1, 5)), params={"topk_final": 0})
    assert bad.status_code == 422


def test_title_search(client: TestClient, pipeline: Pipeline) -> None:
    title = str(pipeline.catalogue.titles[0])
    word = title.split()[0]
    found = client.get("/items", params={"query": word.upper(), "limit": 50}).json()["items"]
    assert found and all(word.lower() in item["title"].lower() for item in found)
    counts = [item["ratings"] for item in found]
    assert counts == sorted(counts, reverse=True)
    assert len(client.get("/items", params={"limit": 3}).json()["items"]) == 3
    assert client.get("/items", params={"query": "no such title zzz"}).json()["items"] == []
    # A NUL matches no title (numpy strings would drop it and search for the rest).
    assert client.get("/items", params={"query": "\x00"}).json()["items"] == []
    assert client.get("/items", params={"query": word + "\x00"}).json()["items"] == []


def test_metrics_in_prometheus_text(client: TestClient, warm_user: int) -> None:
    client.get(f"/users/{warm_user}/recommendations")
    client.get("/users/abc/recommendations")
    text = client.get("/metrics").text
    endpoint = 'endpoint="/users/{user_id}/recommendations"'
    assert f'recfunnel_http_requests_total{{method="GET",{endpoint},status="200"}} 1' in text
    assert f'recfunnel_http_requests_total{{method="GET",{endpoint},status="422"}} 1' in text
    assert (
        f'recfunnel_http_request_duration_seconds{{method="GET",{endpoint},quantile="0.99"}}'
        in text
    )
    for stage in ("recall", "prerank", "rank", "rerank"):
        assert f'recfunnel_stage_duration_seconds{{stage="{stage}",quantile="0.5"}}' in text
    assert "# TYPE recfunnel_stage_duration_seconds summary" in text


def test_page_and_docs_are_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").status_code == 200
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/health", "/users/{user_id}/recommendations", "/users/{user_id}/ratings"} <= set(paths)


def test_serve_refuses_a_bad_run_dir_in_one_line(tmp_path: Path, capsys) -> None:
    assert main(["serve", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("recfunnel: error:") and "\n" not in err and "Traceback" not in err


def test_store_concurrent_writers_never_corrupt_it(tmp_path: Path) -> None:
    """4 threads in this process and 3 other processes write to one database at once."""
    path = tmp_path / "ratings.sqlite3"
    store = RatingStore(path)
    calls = 40
    script = (
        "import sys\n"
        "from recfunnel.serving.store import RatingStore\n"
        "store = RatingStore(sys.argv[1])\n"
        f"for i in range({calls}):\n"
        "    store.add(int(sys.argv[2]), [(i + 1, 3), (i + 1000, 4)])\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(path), str(100 + p)]) for p in range(3)
    ]
    errors: list[BaseException] = []

    def write(user: int) -> None:
        try:
            for i in range(calls):
                store.add(user, [(i + 1, 5), (i + 1000, 2)])
        except BaseException as error:  # reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(u,)) for u in range(1, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(p.wait(timeout=120) == 0 for p in procs)
    assert not errors
    assert store.count() == 7 * calls * 2
    for user in (1, 2, 3, 4, 100, 101, 102):
        history = store.history(user)
        assert len(history) == calls * 2
        stamps = [t for _, _, t in history]
        assert stamps == sorted(stamps)  # a user's timestamps never go back
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_store_dates_ratings_after_the_known_history(tmp_path: Path) -> None:
    store = RatingStore(tmp_path / "r.sqlite3")
    future = int(time.time()) + 10_000
    (first,) = store.add(7, [(1, 4)], floor=future)
    assert first[2] == future + 1
    (second,) = store.add(7, [(2, 4)])
    assert second[2] >= first[2]  # never earlier than the user's last stored rating


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_server(
    run_dir: Path, data: list[str], db: Path, extra: Sequence[str] = ()
) -> tuple[subprocess.Popen, str]:
    """`recfunnel serve` in a subprocess on a free 127.0.0.1 port, once /health answers;
    `extra`: more serve options (e.g. --workers 2)."""
    for _ in range(3):  # the free port may be taken between the probe and the bind
        port = _free_port()
        cmd = [sys.executable, "-m", "recfunnel.cli", "serve", str(run_dir), "--port", str(port)]
        proc = subprocess.Popen(
            [*cmd, "--db", str(db), *data, *extra], stderr=subprocess.PIPE, text=True
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        return proc, url
            except OSError:
                time.sleep(0.2)
        if proc.poll() is None:
            proc.kill()
        stderr = proc.communicate(timeout=10)[1]
        if "cannot listen" not in stderr:
            raise AssertionError(f"the server did not start: {stderr[-2000:]}")
    raise AssertionError("no free port found for the server")


def _request(url: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_acknowledged_ratings_survive_kill_9(smoke_run, tmp_path: Path, warm_user: int) -> None:
    run_dir, data = smoke_run
    db = tmp_path / "serving" / "ratings.sqlite3"
    proc, url = _start_server(run_dir, data, db)
    try:
        before = _request(f"{url}/users/{warm_user}/recommendations")
        rated = _final(before)[:3]
        for movie in rated:  # three separate acknowledged writes
            _request(f"{url}/users/{warm_user}/ratings", _ratings((movie, 5)))
        os.kill(proc.pid, signal.SIGKILL)  # no shutdown, no flush: only what was committed
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
    proc, url = _start_server(run_dir, data, db)
    try:
        after = _request(f"{url}/users/{warm_user}/recommendations")
        assert after["live_ratings"] == 3
        assert not set(rated) & set(_final(after))
    finally:
        proc.terminate()  # graceful stop: uvicorn exits on SIGTERM
        try:
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)
    assert len(RatingStore(db).history(warm_user)) == 3


def test_light_response_without_the_trace(client: TestClient, warm_user: int) -> None:
    full = client.get(f"/users/{warm_user}/recommendations").json()
    light = client.get(f"/users/{warm_user}/recommendations?trace=false")
    assert light.status_code == 200
    body = light.json()
    assert "stages" not in body and "movies" not in body
    assert [m["movie_id"] for m in body["final"]] == [m["movie_id"] for m in full["final"]]
    assert client.get(f"/users/{warm_user}/recommendations?trace=maybe").status_code == 422
