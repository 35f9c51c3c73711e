"""Pre-forked worker processes: `recfunnel serve RUN_DIR --workers N`.

    run_workers(lambda: uvicorn.Server(config).run(sockets=[sock]), workers=2)

Why processes: one request's work is ~2 ms of Python and small numpy calls under the GIL,
so one process serves one request at a time on one core, however many threads it has. N
processes serve N at once.

Why fork after loading: the parent loads the run once (data, models, kernels: most of the
~800 MB) and then forks; the workers share those pages copy-on-write instead of each loading
its own copy, and start in milliseconds. `gc.freeze()` before the fork moves every loaded
object out of the garbage collector's reach, so a worker's collections never write to (and
so never copy) the shared pages. All workers accept on the one listening socket; the kernel
hands each new connection to one of them.

The parent only supervises: SIGTERM or SIGINT is passed on to every worker (each shuts down
gracefully, as uvicorn does alone) and the parent exits when they have; a worker that dies
any other way is replaced by a fresh fork, up to MAX_RESTARTS in RESTART_WINDOW_S seconds.
Workers get SIGTERM if the parent dies (Linux `PR_SET_PDEATHSIG`), so a kill -9 of the
server leaves no orphan holding the port.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import signal
import sys
import time
from collections.abc import Callable

MAX_RESTARTS = 5  # worker deaths tolerated within RESTART_WINDOW_S before giving up
RESTART_WINDOW_S = 60.0
SHUTDOWN_GRACE_S = 15.0  # after SIGTERM, how long workers may take before SIGKILL
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent() -> None:
    """Ask Linux to send this process SIGTERM when its parent exits (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # no prctl: orphans then need a manual kill
        pass


def _fork(serve: Callable[[], None], parent: int) -> int:
    """Fork one worker that runs `serve()` and exits; returns its pid in the parent."""
    pid = os.fork()
    if pid:
        return pid
    # The worker. Exit codes: 0 after a clean serve(), 1 if it raised.
    code = 1
    try:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)  # uvicorn installs its own handlers
        _die_with_parent()
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(0)
        serve()
        code = 0
    except BaseException as error:  # a worker must never return into the parent's code
        print(f"recfunnel: worker {os.getpid()} failed: {error}", file=sys.stderr, flush=True)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run_workers(serve: Callable[[], None], workers: int, log: Callable[[str], None]) -> int:
    """Run `serve` in `workers` forked processes until SIGTERM/SIGINT (one worker: in this
    process, no fork); 0 on a clean stop, 1 if workers kept dying (MAX_RESTARTS within
    RESTART_WINDOW_S)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    gc.collect()
    # Loaded objects out of the collector's reach: never scanned by a worker's GC, so never
    # copied; and in one process a full collection over the loaded state no longer lands
    # inside a request (the worst call: 24 -> 6 ms).
    gc.freeze()
    if workers == 1:  # no fork: this process serves, uvicorn handles its signals
        serve()
        return 0
    parent = os.getpid()
    stopping = False
    children: set[int] = set()

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):  # it died on its own just now
                os.kill(pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    deaths: list[float] = []
    code = 0
    try:
        for _ in range(workers):
            children.add(_fork(serve, parent))
        while children and not stopping:
            try:
                pid, status = os.wait()  # a signal handler runs, then the wait resumes
            except ChildProcessError:
                break
            children.discard(pid)
            if stopping:
                break
            now = time.monotonic()
            deaths = [t for t in deaths if now - t < RESTART_WINDOW_S] + [now]
            reason = os.waitstatus_to_exitcode(status)
            if len(deaths) > MAX_RESTARTS:
                log(f"workers keep dying (last: {pid}, status {reason}); stopping the server")
                code = 1
                stop(signal.SIGTERM, None)
                break
            log(f"worker {pid} exited (status {reason}); starting a new one")
            children.add(_fork(serve, parent))
        # Shutting down: every worker got SIGTERM; wait for them, SIGKILL the slow ones.
        deadline = time.monotonic() + SHUTDOWN_GRACE_S
        while children:
            pid, _ = os.waitpid(-1, os.WNOHANG)
            if pid:
                children.discard(pid)
            elif time.monotonic() > deadline:
                for pid in children:
                    os.kill(pid, signal.SIGKILL)
                deadline = float("inf")
            else:
                time.sleep(0.05)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        gc.unfreeze()
    return code


__all__ = ["run_workers"]
