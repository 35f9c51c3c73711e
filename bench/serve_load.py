"""Load test of the REST service over HTTP: starts `recfunnel serve` on 127.0.0.1 itself,
sends requests from concurrent clients in two phases, and reports throughput, latency
percentiles, errors and the server's memory growth; writes bench/serve_results.json and
stops the server.

    make bench-serve                       # RUN_DIR=runs/default, 8 clients, 2 x 20,000
    .venv/bin/python bench/serve_load.py runs/serve --requests 2000 --max-seconds 60
    .venv/bin/python bench/serve_load.py runs/serve --light   # ?trace=false: final list only

The server runs `--workers` processes (default: one per core). Each request is GET
/users/{id}/recommendations with the run's defaults (the whole funnel and its trace), for
user ids drawn at random (seeded) from users.dat. Two phases of --requests each:

1. closed loop: every client sends its next request when the last one is answered. Its
   requests/s is the most the server can do.
2. open loop at --rate requests/s (default 400, the target): requests are due on a fixed
   schedule and each latency counts from when the request was due. This is where the
   latency targets are judged: in a closed loop with 8 clients, latency is 8 / throughput
   (Little's law) whatever the server does, so it measures the clients, not the server.

Each phase is bounded in count and in time: it stops at --requests or after --max-seconds,
whichever comes first. The clients run on the same machine as the server (on 2 cores they
take CPU from it), and the numbers mean nothing while another heavy process runs: the load
average and the busiest other processes at the start are written beside them. Each phase
also reports the CPU time per request of the server's processes and of the clients: the
cores divided by their sum is about the most requests/s this machine can serve.
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
TARGETS = {
    "p50_ms": 5.0,
    "p99_ms": 15.0,
    "requests_per_s": 400.0,
    "errors": 0,
    "memory_growth": 5.0,
}


class LoadError(Exception):
    """The run cannot start: a bad run directory, or a server that does not come up."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_pids(pid: int) -> list[int]:
    """The server's process `pid` and its worker processes (Linux /proc)."""
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.is_file():
        pids += [int(p) for p in children.read_text().split()]
    return pids


def server_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the server's processes have used so far: what a phase
    costs the server, apart from its clients' share of the same cores."""
    total = 0
    for p in server_pids(pid):
        try:
            # Fields after the command name (which may hold spaces): utime and stime are
            # the 14th and 15th of the whole line, in clock ticks.
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError as error:
            raise LoadError(f"cannot read the CPU time of server process {p}: {error}") from None
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def server_memory_mib(pid: int) -> dict[str, float]:
    """Memory of the server: process `pid` and its worker processes (Linux /proc). RSS
    counts the pages the workers share copy-on-write once per process; PSS splits each
    shared page between the processes sharing it, so its sum is what the server costs."""
    pids = server_pids(pid)
    rss = pss = 0.0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1]) / 1024
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1]) / 1024
        except OSError as error:
            raise LoadError(f"cannot read the memory of server process {p}: {error}") from None
    return {"processes": len(pids), "rss_mib": round(rss, 1), "pss_mib": round(pss, 1)}


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
    cmd += ["--workers", str(args.workers)]
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


def load(
    port: int,
    paths: list[str],
    clients: int,
    max_seconds: float,
    rate: float | None = None,
    server_pid: int | None = None,
) -> dict:
    """Send every path once from `clients` threads (keep-alive connections); stop early at
    `max_seconds`. Latencies in ms of the completed requests, and the errors; with
    `server_pid`, the CPU time per request of the server and of the clients (this process).

    rate None: closed loop, each client sends its next request as soon as the last one is
    answered (the most the server can do). rate R: open loop, request i is due at
    start + i / R whichever client sends it, and its latency counts from when it was due,
    so a server that falls behind is charged for the wait (no coordinated omission)."""
    lock = threading.Lock()
    next_index = 0
    latencies: list[float] = []
    errors: dict[str, int] = {}
    deadline = time.monotonic() + max_seconds
    start = time.perf_counter() + 0.05  # every client is up before the first is due

    def client() -> None:
        nonlocal next_index
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine: list[float] = []
        try:
            while time.monotonic() < deadline:
                with lock:
                    if next_index >= len(paths):
                        break
                    index = next_index
                    next_index += 1
                path = paths[index]
                if rate is None:
                    clock = time.perf_counter()
                else:
                    clock = start + index / rate
                    wait = clock - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)
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
    server_cpu = server_cpu_s(server_pid) if server_pid is not None else 0.0
    client_cpu = time.process_time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    client_cpu = time.process_time() - client_cpu
    done = len(latencies) + sum(errors.values())
    cpu = {}
    if server_pid is not None and done:
        # On a shared machine, capacity is about cores / (server + client CPU per request).
        server_cpu = server_cpu_s(server_pid) - server_cpu
        cpu = {
            "server_cpu_ms_per_request": round(1000 * server_cpu / done, 3),
            "client_cpu_ms_per_request": round(1000 * client_cpu / done, 3),
        }
    return {
        "mode": "closed loop" if rate is None else f"open loop at {rate:g} requests/s",
        "requests_done": done,
        "stopped_by_time_limit": next_index < len(paths),
        "wall_s": round(wall, 2),
        "requests_per_s": round(done / wall, 1),
        "p50_ms": round(percentile(latencies, 0.50), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "max_ms": round(max(latencies, default=float("nan")), 2),
        "errors": sum(errors.values()),
        "errors_by_kind": errors,
        **cpu,
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
    if args.requests < 1 or args.clients < 1 or args.max_seconds <= 0 or args.workers < 1:
        raise LoadError("--requests, --clients and --workers must be >= 1, --max-seconds > 0")
    if args.rate is not None and args.rate <= 0:
        raise LoadError(f"--rate must be > 0 requests/s, got {args.rate}")
    load_before = os.getloadavg()
    busy = busy_processes({os.getpid()})
    phases = {}
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        port = free_port()
        proc = start_server(args, port, Path(tmp) / "ratings.sqlite3")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            users = json.loads(get(conn, "/health")[1])["users"]
            conn.close()
            rng = random.Random(args.seed)
            query = "?trace=false" if args.light else ""

            def draw(n: int) -> list[str]:
                return [f"/users/{rng.randint(1, users)}/recommendations{query}" for _ in range(n)]

            load(port, draw(args.warmup), args.clients, args.max_seconds)  # not measured
            memory_before = server_memory_mib(proc.pid)
            phases["closed_loop"] = load(
                port, draw(args.requests), args.clients, args.max_seconds, server_pid=proc.pid
            )
            if args.rate is not None:
                phases["paced"] = load(
                    port,
                    draw(args.requests),
                    args.clients,
                    args.max_seconds,
                    rate=args.rate,
                    server_pid=proc.pid,
                )
            memory_after = server_memory_mib(proc.pid)
            stages = stage_p50s(port)
        finally:
            stop_server(proc)
    growth = 100 * (memory_after["pss_mib"] - memory_before["pss_mib"]) / memory_before["pss_mib"]
    # Throughput is what the closed loop reached; latency is judged where the targets put
    # it, at the target rate (with 8 closed-loop clients, Little's law makes the latency
    # 8 / throughput: p50 <= 5 ms would need 1,600 requests/s).
    latency = phases.get("paced", phases["closed_loop"])
    report = {
        "run_dir": str(args.run_dir),
        "endpoint": "GET /users/{id}/recommendations"
        + ("?trace=false (run defaults, final list only)" if args.light else " (full trace)"),
        "workers": args.workers,
        "clients": args.clients,
        "requests_per_phase": args.requests,
        **phases,
        "server_memory_before": memory_before,
        "server_memory_after": memory_after,
        "memory_growth_percent": round(growth, 2),
        "server_stage_p50_ms": stages,
        "targets": TARGETS,
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "busy_processes_before": busy,
        },
    }
    report["targets_met"] = {
        "requests_per_s (closed loop)": phases["closed_loop"]["requests_per_s"]
        >= TARGETS["requests_per_s"],
        f"p50_ms ({latency['mode']})": latency["p50_ms"] <= TARGETS["p50_ms"],
        f"p99_ms ({latency['mode']})": latency["p99_ms"] <= TARGETS["p99_ms"],
        "errors (all phases)": sum(p["errors"] for p in phases.values()) == 0,
        "memory_growth (PSS, all phases)": growth < TARGETS["memory_growth"],
    }
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, nargs="?", default=Path("runs/default"))
    parser.add_argument(
        "--requests", type=int, default=20_000, help="measured requests in each phase"
    )
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="server processes (recfunnel serve --workers; default: one per core)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=400.0,
        help="requests/s of the second, open-loop phase, where latency is judged "
        "(default: the target's 400); 0 skips it",
    )
    parser.add_argument("--max-seconds", type=float, default=300.0, help="time bound per phase")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured first requests")
    parser.add_argument("--startup-seconds", type=float, default=180.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--light", action="store_true", help="ask ?trace=false: the final list, not the trace"
    )
    parser.add_argument("--data-dir", default=os.environ.get("RECFUNNEL_DATA_DIR"))
    parser.add_argument("--out", type=Path, default=HERE / "serve_results.json")
    args = parser.parse_args()
    if args.rate == 0:
        args.rate = None
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
