"""Shared pytest fixtures."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from recfunnel.data import MovieLens, load_movielens
from recfunnel.data.synthetic import write_synthetic_movielens

ML1M_FILES = ("ratings.dat", "users.dat", "movies.dat")


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default synthetic ML-1M-shaped data set (600 users, 400 movies, seed 0), written
    once per session. Shared by every test: read it, never write into it."""
    return write_synthetic_movielens(tmp_path_factory.mktemp("synthetic-ml1m"))


@pytest.fixture(scope="session")
def ml1m_dir() -> Path:
    """The real MovieLens-1M folder: $RECFUNNEL_DATA_DIR, else ../shared/data/ml-1m.

    Skips the test when the files are absent, or fails it when RECFUNNEL_REQUIRE_REALDATA=1
    (CI), so a missing copy cannot pass unnoticed as a skip.
    """
    env = os.environ.get("RECFUNNEL_DATA_DIR")
    folder = Path(env) if env else Path(__file__).resolve().parents[2] / "shared/data/ml-1m"
    missing = [name for name in ML1M_FILES if not (folder / name).is_file()]
    if missing:
        reason = (
            f"real MovieLens-1M not found: {folder} has no {', '.join(missing)} "
            "(set RECFUNNEL_DATA_DIR to the folder holding the ml-1m files)"
        )
        if os.environ.get("RECFUNNEL_REQUIRE_REALDATA") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return folder


@pytest.fixture(scope="session")
def ml1m(ml1m_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> MovieLens:
    """The real MovieLens-1M, loaded once per session (parsed into a temp cache)."""
    return load_movielens(ml1m_dir, cache_dir=tmp_path_factory.mktemp("ml1m-cache"))


@pytest.fixture(scope="session")
def synthetic_ml(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> MovieLens:
    """The default synthetic data set, loaded once per session (parsed into a temp cache)."""
    return load_movielens(synthetic_dir, cache_dir=tmp_path_factory.mktemp("synthetic-cache"))


@pytest.fixture(scope="session")
def smoke_run(
    synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[str]]:
    """One run directory trained through the CLI with the smoke config on the synthetic
    data, shared by the session: (its path, the data options for further CLI calls). Tests
    may add report files to it (as `evaluate` does); anything they damage, they copy first."""
    from recfunnel.cli import main
    from recfunnel.run import SMOKE_OVERRIDES

    root = tmp_path_factory.mktemp("smoke-run")
    data = ["--data-dir", str(synthetic_dir), "--cache-dir", str(root / "cache"), "--no-progress"]
    out = root / "run"
    assert main(["train", *data, "--out", str(out), *SMOKE_OVERRIDES]) == 0
    return out, data


@contextmanager
def _uvicorn_in_thread(app: Any) -> Iterator[int]:
    """Serves `app` with a real uvicorn on a free 127.0.0.1 port in a daemon thread of this
    process; yields the port once it accepts, and stops the server on exit."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started, "the in-thread server did not start"
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


@pytest.fixture(scope="session")
def uvicorn_in_thread() -> Any:
    """`with uvicorn_in_thread(app) as port:` a real server of `app` (`_uvicorn_in_thread`)."""
    return _uvicorn_in_thread
