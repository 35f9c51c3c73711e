"""Load test of the REST service over HTTP: starts `recfunnel serve` on 127.0.0.1 itself,
sends N requests from concurrent clients, and reports throughput, latency percentiles,
errors and the server's memory growth; writes bench/serve_results.json, stops the server.

    make bench-serve                       # RUN_DIR=runs/default, 8 clients, 20,000 requests
    .venv/bin/python bench/serve_load.py runs/serve --requests 2000 --max-seconds 60
    .venv/bin/python bench/serve_load.py runs/serve --light   # ?trace=false: final list only

Each request is GET /users/{id}/recommendations with the run's defaults (the whole funnel and
its trace), for user ids drawn at random (seeded) from users.dat. The run is bounded in count
and in time: it stops at --requests or after --max-seconds, whichever comes first. The
clients run on the same machine as the server (on 2 cores they take CPU from it), and the
numbers mean nothing while another heavy process runs: the load average and the busiest
other processes at the start are written beside them.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Targets of the serving issue, reported beside the measurement (met or not).
TARGETS = {"p50_ms": 5.0, "p99_ms": 15.0, "requests_per_s": 400.0, "errors": 0, "rss_growth": 5.0}


class LoadError(Exception):
    """The run cannot start: a bad run directory, or a server that does not come up."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mib(pid: int) -> float:
    """Resident memory of process `pid` in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise LoadError(f"no VmRSS for process {pid}")


def busy_processes(own: set[int]) -> list[str]:
    """Other processes using more than 20 % of a core right now (ps), e.g. a training run."""
    try:
        out = subprocess.run(
            ["ps", "-eo", "pid,pcpu,args", "--sort=-pcpu", "--no-headers"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    busy = []
    for line in out.splitlines()[:10]:
        pid, cpu, *args = line.split(None, 2)
        if int(pid) not in own and float(cpu) > 20:
            busy.append(f"{pid} {cpu}% {' '.join(args)[:120]}")
    return busy


def get(conn: http.client.HTTPConnection, path: str) -> tuple[int, bytes]:
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, response.read()


def start_server(args: argparse.Namespace, port: int, db: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "recfunnel.cli", "serve", str(args.run_dir)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--db", str(db), "--no-progress"]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + args.startup_seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LoadError(
                f"the server exited with status {proc.returncode}: "
                f"{proc.stderr.read().strip()[-1000:]}"
            )
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            if get(conn, "/health")[0] == 200:
                conn.close()
                return proc
        except OSError:
            time.sleep(0.25)
    stop_server(proc)
    raise LoadError(f"the server did not answer /health within {args.startup_seconds} s")


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM (uvicorn shuts down gracefully), then SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def load(port: int, paths: list[str], clients: int, max_seconds: float) -> dict:
    """Send every path once from `clients` threads (keep-alive connections); stop early at
    `max_seconds`. Latencies in ms of the completed requests, and the errors."""
    lock = threading.Lock()
    next_index = 0
    latencies: list[float] = []
    errors: dict[str, int] = {}
    deadline = time.monotonic() + max_seconds

    def client() -> None:
        nonlocal next_index
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine: list[float] = []
        try:
            while time.monotonic() < deadline:
                with lock:
                    if next_index >= len(paths):
                        break
                    path = paths[next_index]
                    next_index += 1
                clock = time.perf_counter()
                try:
                    status, _ = get(conn, path)
                except (OSError, http.client.HTTPException) as error:
                    status = type(error).__name__
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                if status == 200:
                    mine.append((time.perf_counter() - clock) * 1000)
                else:
                    with lock:
                        errors[str(status)] = errors.get(str(status), 0) + 1
        finally:
            conn.close()
            with lock:
                latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {
        "wall_s": time.perf_counter() - start,
        "latencies": latencies,
        "errors": errors,
        "stopped_by_time": next_index < len(paths),
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered) + 0.5)) - 1))]


def stage_p50s(port: int) -> dict[str, float]:
    """The server's own p50 per funnel component (ms), from /metrics."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    text = get(conn, "/metrics")[1].decode()
    conn.close()
    out = {}
    for line in text.splitlines():
        if line.startswith("recfunnel_stage_duration_seconds{") and 'quantile="0.5"' in line:
            stage = line.split('stage="')[1].split('"')[0]
            out[stage] = round(float(line.rsplit(" ", 1)[1]) * 1000, 3)
    return out


def run(args: argparse.Namespace) -> dict:
    if not (args.run_dir / "manifest.json").is_file():
        raise LoadError(
            f"{args.run_dir} is not a run directory (no manifest.json); "
            "train one with `recfunnel train --out DIR`"
        )
    if args.requests < 1 or args.clients < 1 or args.max_seconds <= 0:
        raise LoadError("--requests and --clients must be >= 1, --max-seconds > 0")
    load_before = os.getloadavg()
    busy = busy_processes({os.getpid()})
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        port = free_port()
        proc = start_server(args, port, Path(tmp) / "ratings.sqlite3")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            users = json.loads(get(conn, "/health")[1])["users"]
            conn.close()
            rng = random.Random(args.seed)
            query = "?trace=false" if args.light else ""
            draw = [
                f"/users/{rng.randint(1, users)}/recommendations{query}" for _ in range(args.warmup)
            ]
            load(port, draw, args.clients, args.max_seconds)  # warm-up, not measured
            rss_before = rss_mib(proc.pid)
            paths = [
                f"/users/{rng.randint(1, users)}/recommendations{query}"
                for _ in range(args.requests)
            ]
            result = load(port, paths, args.clients, args.max_seconds)
            rss_after = rss_mib(proc.pid)
            stages = stage_p50s(port)
        finally:
            stop_server(proc)
    latencies = result["latencies"]
    done = len(latencies) + sum(result["errors"].values())
    report = {
        "run_dir": str(args.run_dir),
        "clients": args.clients,
        "requests_asked": args.requests,
        "requests_done": done,
        "stopped_by_time_limit": result["stopped_by_time"],
        "wall_s": round(result["wall_s"], 2),
        "requests_per_s": round(done / result["wall_s"], 1),
        "p50_ms": round(percentile(latencies, 0.50), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "max_ms": round(max(latencies, default=float("nan")), 2),
        "errors": sum(result["errors"].values()),
        "errors_by_kind": result["errors"],
        "server_rss_mib_before": round(rss_before, 1),
        "server_rss_mib_after": round(rss_after, 1),
        "rss_growth_percent": round(100 * (rss_after - rss_before) / rss_before, 2),
        "server_stage_p50_ms": stages,
        "targets": TARGETS,
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "busy_processes_before": busy,
        },
        "endpoint": "GET /users/{id}/recommendations"
        + ("?trace=false (run defaults, final list only)" if args.light else " (full trace)"),
    }
    report["targets_met"] = {
        "p50_ms": report["p50_ms"] <= TARGETS["p50_ms"],
        "p99_ms": report["p99_ms"] <= TARGETS["p99_ms"],
        "requests_per_s": report["requests_per_s"] >= TARGETS["requests_per_s"],
        "errors": report["errors"] == 0,
        "rss_growth": report["rss_growth_percent"] < TARGETS["rss_growth"],
    }
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, nargs="?", default=Path("runs/default"))
    parser.add_argument("--requests", type=int, default=20_000, help="measured requests")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="time bound")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured first requests")
    parser.add_argument("--startup-seconds", type=float, default=180.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--light", action="store_true", help="ask ?trace=false: the final list, not the trace"
    )
    parser.add_argument("--data-dir", default=os.environ.get("RECFUNNEL_DATA_DIR"))
    parser.add_argument("--out", type=Path, default=HERE / "serve_results.json")
    args = parser.parse_args()
    try:
        report = run(args)
    except LoadError as error:
        print(f"serve_load.py: error: {error}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=2)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(text + "\n")
    tmp.replace(args.out)  # atomic: a reader never sees half a file
    print(text)
    if report["machine"]["busy_processes_before"]:
        print(
            "serve_load.py: warning: other busy processes were running; these timings are "
            "not a measurement of the service alone",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
