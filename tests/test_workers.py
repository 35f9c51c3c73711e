"""`recfunnel serve --workers N`: forked worker processes share one rating store, a dead
worker is replaced, /metrics adds up every worker's requests, SIGTERM stops them all; and
bench/serve_load.py runs end to end against such a server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from recfunnel.serving.metrics import Metrics
from test_serve import _start_server

ROOT = Path(__file__).resolve().parents[1]


def test_metrics_merge_every_publisher(tmp_path: Path) -> None:
    """Two Metrics sharing a folder, as two workers do: either one renders both's counts."""
    first, second = Metrics(tmp_path), Metrics(tmp_path)
    for _ in range(3):
        first.observe_request("GET", "/health", 200, 0.001)
    for _ in range(2):
        second.observe_request("GET", "/health", 200, 0.003)
    second.observe_stage("rank", 0.002)
    second._publish()  # what its publisher thread does within PUBLISH_EVERY_S
    text = first.render()
    assert 'recfunnel_http_requests_total{method="GET",endpoint="/health",status="200"} 5' in text
    assert 'recfunnel_stage_duration_seconds_count{stage="rank"} 1' in text
    # The quantiles are over both windows: 3 values of 1 ms and 2 of 3 ms.
    p99 = 'recfunnel_http_request_duration_seconds{method="GET",endpoint="/health",quantile="0.99"}'
    assert f"{p99} 0.003" in text
    # A damaged snapshot (a worker killed mid-write leaves a whole one behind, but the disk
    # may not) is skipped, not an error and not a wrong number.
    whole = next(tmp_path.glob("*.snapshot")).read_bytes()
    truncated_header = whole[: whole.index(b"\n") - 1]
    bad_rows = b'{"counts": [], "requests": [1], "stages": []}\n'
    for damaged in (whole[:-3], truncated_header, b"{}\n", bad_rows, b""):
        (tmp_path / "9-damaged.snapshot").write_bytes(damaged)
        assert first.render().count('status="200"} 5') == 1
    # Without a folder, a Metrics sees only its own requests.
    alone = Metrics()
    alone.observe_request("GET", "/health", 200, 0.001)
    assert 'status="200"} 1' in alone.render()


def _get(url: str) -> dict:
    # A new connection per call, so the kernel may hand it to any worker.
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _children(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(p) for p in path.read_text().split()} if path.is_file() else set()


def _workers_seen(url: str, want: set[int] | int, tries: int = 200) -> set[int]:
    """Worker pids that answered /health over up to `tries` connections, stopping once
    `want` (a set that must be covered, or a count) is reached."""
    seen: set[int] = set()
    for _ in range(tries):
        seen.add(_get(f"{url}/health")["worker"])
        if (seen >= want) if isinstance(want, set) else len(seen) >= want:
            break
    return seen


def test_workers_share_the_store_replace_the_dead_and_stop_together(
    smoke_run, tmp_path: Path
) -> None:
    run_dir, data = smoke_run
    proc, url = _start_server(run_dir, data, tmp_path / "ratings.sqlite3", ["--workers", "2"])
    try:
        deadline = time.monotonic() + 30
        while len(_children(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        workers = _children(proc.pid)
        assert len(workers) == 2
        assert _workers_seen(url, workers) == workers  # both answer, nobody else does
        asked = 0  # recommendation requests sent, for /metrics below
        for warm_user in range(1, 100):  # the first id with a known history
            asked += 1
            if _get(f"{url}/users/{warm_user}/recommendations?trace=false")["path"] == "funnel":
                break
        # A rating acknowledged by one worker is history for every worker at once.
        movie = _get(f"{url}/users/{warm_user}/recommendations?trace=false")["final"][0]
        rating = {"movie_id": movie["movie_id"], "rating": 5}
        _post(f"{url}/users/{warm_user}/ratings", {"ratings": [rating]})
        asked += 1 + 20
        for _ in range(20):
            body = _get(f"{url}/users/{warm_user}/recommendations?trace=false")
            assert body["live_ratings"] == 1
            assert movie["movie_id"] not in [m["movie_id"] for m in body["final"]]
        # /metrics counts every worker's requests (each publishes within a second).
        time.sleep(1.5)
        text = urllib.request.urlopen(f"{url}/metrics", timeout=30).read().decode()
        endpoint = 'endpoint="/users/{user_id}/recommendations"'
        assert f'{{method="GET",{endpoint},status="200"}} {asked}' in text
        # A worker killed outright is replaced by a fresh fork; the server keeps answering.
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while (victim in _children(proc.pid) or len(_children(proc.pid)) < 2) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.1)
        replaced = _children(proc.pid)
        assert len(replaced) == 2 and victim not in replaced
        assert _get(f"{url}/users/{warm_user}/recommendations?trace=false")["live_ratings"] == 1
    finally:
        proc.terminate()
        try:
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)
    assert code == 0
    for pid in replaced:  # SIGTERM to the parent stopped every worker
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()


def test_serve_load_bench_runs_end_to_end(smoke_run, tmp_path: Path) -> None:
    """bench/serve_load.py against the smoke run: both phases, 2 workers, a few requests."""
    run_dir, data = smoke_run
    out = tmp_path / "serve_results.json"
    env = {**os.environ, "RECFUNNEL_CACHE_DIR": data[data.index("--cache-dir") + 1]}
    cmd = [sys.executable, str(ROOT / "bench" / "serve_load.py"), str(run_dir)]
    cmd += ["--data-dir", data[data.index("--data-dir") + 1], "--out", str(out)]
    cmd += ["--requests", "40", "--warmup", "5", "--rate", "50", "--workers", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["workers"] == 2 and report["server_memory_before"]["processes"] == 3
    for phase in ("closed_loop", "paced"):
        assert report[phase]["requests_done"] == 40 and report[phase]["errors"] == 0
    assert report["paced"]["mode"] == "open loop at 50 requests/s"
    # 40 requests due at 50/s take at least 0.78 s, however fast the server is.
    assert report["paced"]["wall_s"] >= 0.75
    # Serving a request costs the server CPU (a smoke request: well over 0.1 ms), the
    # clients some; a phase that read no CPU would report 0.
    for phase in ("closed_loop", "paced"):
        assert report[phase]["server_cpu_ms_per_request"] > 0.1
        assert report[phase]["client_cpu_ms_per_request"] > 0
    assert set(report["targets_met"]) and all(
        isinstance(v, bool) for v in report["targets_met"].values()
    )


def test_serve_load_refuses_a_bad_rate_in_one_line(smoke_run, tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "bench" / "serve_load.py"), str(smoke_run[0])]
    done = subprocess.run([*cmd, "--rate", "-3"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "--rate" in done.stderr
