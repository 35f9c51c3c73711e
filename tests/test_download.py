"""download_file / fetch_movielens against a local HTTP server serving a tiny ml-1m.zip."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import zipfile
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import recfunnel
from recfunnel.atomic import sigterm_raises
from recfunnel.data.download import download_file, fetch_movielens
from recfunnel.errors import DownloadError

FILES = {
    "ratings.dat": "1::1::5::978300760\n1::2::3::978302109\n2::1::4::978301968\n",
    "users.dat": "1::F::1::10::48067\n2::M::56::16::70072\n",
    "movies.dat": "1::Toy Story (1995)::Animation|Children's|Comedy\n"
    "2::Jumanji (1995)::Adventure|Children's|Fantasy\n",
    "README": "tiny ml-1m-shaped archive for tests\n",
}


def make_zip(files: dict[str, str], folder: str = "ml-1m") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{folder}/", "")  # GroupLens' archive has the directory entry too
        for name, text in files.items():
            zf.writestr(f"{folder}/{name}", text.encode("latin-1"))
    return buffer.getvalue()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    """Serves `server.routes[path] = (body, declared Content-Length)`; 404 otherwise."""

    def do_GET(self) -> None:
        self.server.requests[self.path] += 1
        if self.path not in self.server.routes:
            self.send_error(404)
            return
        body, length = self.server.routes[self.path]
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(length))
        self.end_headers()
        # HTTP/1.0: the connection closes after this, so a Content-Length larger than the
        # body looks to the client like a transfer cut off half way.
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class Server:
    def __init__(self, httpd: ThreadingHTTPServer) -> None:
        self.httpd = httpd
        self.base = f"http://127.0.0.1:{httpd.server_address[1]}"

    def serve(self, path: str, body: bytes, *, content_length: int | None = None) -> str:
        declared = len(body) if content_length is None else content_length
        self.httpd.routes[path] = (body, declared)
        return self.base + path

    def requests(self, path: str) -> int:
        return self.httpd.requests[path]


@pytest.fixture
def server() -> Iterator[Server]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.routes, httpd.requests = {}, Counter()
    # A short poll interval: shutdown() waits for it, and the default 0.5 s adds up.
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield Server(httpd)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def assert_local_copy_hint(message: str) -> None:
    assert "RECFUNNEL_DATA_DIR" in message and "--data-dir" in message


def test_fetch_downloads_extracts_then_reuses(server: Server, tmp_path: Path) -> None:
    archive = make_zip(FILES)
    url = server.serve("/ml-1m.zip", archive)
    cache = tmp_path / "cache"

    folder = fetch_movielens(cache, url=url, md5=md5(archive), progress=True)
    assert folder == cache / "ml-1m"
    for name, text in FILES.items():
        assert (folder / name).read_text(encoding="latin-1") == text
    assert json.loads((folder / ".complete").read_text()) == {
        "md5": md5(archive),
        "sizes": {name: len(FILES[name]) for name in ("ratings.dat", "users.dat", "movies.dat")},
    }
    assert server.requests("/ml-1m.zip") == 1

    assert fetch_movielens(cache, url=url, md5=md5(archive), progress=False) == folder
    assert server.requests("/ml-1m.zip") == 1

    # Without the extracted folder, the verified zip is unpacked again, not downloaded.
    shutil.rmtree(folder)
    assert fetch_movielens(cache, url=url, md5=md5(archive), progress=False) == folder
    assert server.requests("/ml-1m.zip") == 1
    assert sorted(p.name for p in cache.iterdir()) == ["ml-1m", "ml-1m.zip"]  # no temp left


def test_interrupted_extraction_is_not_trusted(server: Server, tmp_path: Path) -> None:
    archive = make_zip(FILES)
    url = server.serve("/ml-1m.zip", archive)
    half = tmp_path / "ml-1m"  # as if a run died mid-extraction: files but no marker
    half.mkdir()
    (half / "ratings.dat").write_text("1::1::")
    (half / "users.dat").write_text("")
    (half / "movies.dat").write_text("")

    folder = fetch_movielens(tmp_path, url=url, md5=md5(archive), progress=False)
    assert (folder / "ratings.dat").read_text() == FILES["ratings.dat"]
    assert server.requests("/ml-1m.zip") == 1


@pytest.mark.parametrize("name", ["ratings.dat", "users.dat", "movies.dat"])
def test_truncated_extracted_file_is_extracted_again(
    server: Server, tmp_path: Path, name: str
) -> None:
    archive = make_zip(FILES)
    url = server.serve("/ml-1m.zip", archive)
    folder = fetch_movielens(tmp_path, url=url, md5=md5(archive), progress=False)
    with open(folder / name, "r+b") as f:  # e.g. a disk that filled up, or a stray edit
        f.truncate(10)
    assert fetch_movielens(tmp_path, url=url, md5=md5(archive), progress=False) == folder
    assert (folder / name).read_text(encoding="latin-1") == FILES[name]
    assert server.requests("/ml-1m.zip") == 1  # the verified zip is reused, not fetched


def test_old_style_marker_is_extracted_again(server: Server, tmp_path: Path) -> None:
    archive = make_zip(FILES)
    url = server.serve("/ml-1m.zip", archive)
    folder = fetch_movielens(tmp_path, url=url, md5=md5(archive), progress=False)
    # The bare-MD5 marker of older versions, over a file changed in place (same size):
    # nothing records what the files should be, so they are extracted again.
    (folder / ".complete").write_text(md5(archive) + "\n")
    (folder / "users.dat").write_text("x" * len(FILES["users.dat"]))
    assert fetch_movielens(tmp_path, url=url, md5=md5(archive), progress=False) == folder
    assert (folder / "users.dat").read_text() == FILES["users.dat"]
    assert json.loads((folder / ".complete").read_text())["md5"] == md5(archive)
    assert server.requests("/ml-1m.zip") == 1


def test_existing_dest_with_right_md5_is_not_downloaded(server: Server, tmp_path: Path) -> None:
    archive = make_zip(FILES)
    url = server.serve("/ml-1m.zip", archive)
    dest = tmp_path / "ml-1m.zip"
    dest.write_bytes(archive)
    assert download_file(url, dest, md5(archive), progress=False) == dest
    assert server.requests("/ml-1m.zip") == 0


def test_corrupt_existing_dest_is_replaced(server: Server, tmp_path: Path) -> None:
    archive = make_zip(FILES)
    url = server.serve("/ml-1m.zip", archive)
    dest = tmp_path / "ml-1m.zip"
    dest.write_bytes(archive[:100])  # e.g. left by an older, interrupted tool
    assert download_file(url, dest, md5(archive), progress=False) == dest
    assert dest.read_bytes() == archive
    assert server.requests("/ml-1m.zip") == 1


def test_md5_mismatch_leaves_no_file(server: Server, tmp_path: Path) -> None:
    url = server.serve("/ml-1m.zip", make_zip(FILES))
    folder = tmp_path / "downloads"
    with pytest.raises(DownloadError, match="MD5") as info:
        download_file(url, folder / "ml-1m.zip", "0" * 32, progress=False)
    assert_local_copy_hint(str(info.value))
    assert list(folder.iterdir()) == []  # neither the destination nor a temp file


def test_http_404_is_a_download_error(server: Server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="404") as info:
        download_file(server.base + "/missing.zip", tmp_path / "x.zip", "0" * 32, progress=False)
    assert_local_copy_hint(str(info.value))
    assert list(tmp_path.iterdir()) == []


def test_connection_refused_is_a_download_error(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port that nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/ml-1m.zip"
    with pytest.raises(DownloadError, match="could not download") as info:
        fetch_movielens(tmp_path / "cache", url=url, md5="0" * 32, progress=False)
    assert_local_copy_hint(str(info.value))
    assert list((tmp_path / "cache").iterdir()) == []


def test_truncated_body_leaves_no_partial_file(server: Server, tmp_path: Path) -> None:
    archive = make_zip(FILES)
    url = server.serve("/ml-1m.zip", archive, content_length=len(archive) + 1000)
    with pytest.raises(DownloadError, match="closed early") as info:
        download_file(url, tmp_path / "ml-1m.zip", md5(archive), progress=False, timeout=10)
    assert_local_copy_hint(str(info.value))
    assert list(tmp_path.iterdir()) == []


def test_corrupt_zip_is_a_download_error(server: Server, tmp_path: Path) -> None:
    body = b"PK\x03\x04 this is not really a zip archive" * 10
    url = server.serve("/ml-1m.zip", body)
    with pytest.raises(DownloadError, match="not a valid zip"):
        fetch_movielens(tmp_path, url=url, md5=md5(body), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ml-1m.zip"]  # no half folder


def test_zip_without_movies_dat_is_a_download_error(server: Server, tmp_path: Path) -> None:
    archive = make_zip({k: v for k, v in FILES.items() if k != "movies.dat"})
    url = server.serve("/ml-1m.zip", archive)
    with pytest.raises(DownloadError, match="ml-1m/movies.dat"):
        fetch_movielens(tmp_path, url=url, md5=md5(archive), progress=False)
    assert not (tmp_path / "ml-1m").exists()


def test_zip_with_files_outside_ml1m_folder_is_rejected(server: Server, tmp_path: Path) -> None:
    archive = make_zip(FILES, folder="other")
    url = server.serve("/ml-1m.zip", archive)
    with pytest.raises(DownloadError, match="not the MovieLens-1M archive"):
        fetch_movielens(tmp_path, url=url, md5=md5(archive), progress=False)


class _StallingHandler(BaseHTTPRequestHandler):
    """Starts a 10 MiB body, sends 1 KiB of it, then stalls until the test releases it."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(10 << 20))
        self.end_headers()
        self.wfile.write(b"x" * 1024)
        self.wfile.flush()
        self.server.started.set()
        self.server.release.wait(timeout=10)  # bounded even if the test never releases it

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_sigterm_during_download_leaves_no_temp_file(tmp_path: Path) -> None:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _StallingHandler)
    httpd.started, httpd.release = threading.Event(), threading.Event()
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    cache = tmp_path / "cache"
    url = f"http://127.0.0.1:{httpd.server_address[1]}/ml-1m.zip"
    code = (
        "import sys; from pathlib import Path; "
        "from recfunnel.data.download import fetch_movielens; "
        "fetch_movielens(Path(sys.argv[1]), url=sys.argv[2], md5='0' * 32, progress=False)"
    )
    # The child imports the same recfunnel as this test (a source tree or an install).
    src = str(Path(recfunnel.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", code, str(cache), url],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert httpd.started.wait(timeout=10), "the download never started"
            # The child is blocked reading the body, with its temp file open.
            assert [p.name for p in cache.iterdir() if p.name.endswith(".part")]
            child.send_signal(signal.SIGTERM)
            _, stderr = child.communicate(timeout=10)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    finally:
        httpd.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
    assert child.returncode == 143, stderr.decode(errors="replace")
    assert list(cache.iterdir()) == []  # no .part, no .tmp


def test_sigterm_raises_restores_the_previous_handler() -> None:
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        pytest.skip("this test process has its own SIGTERM handler")
    with sigterm_raises():
        handler = signal.getsignal(signal.SIGTERM)
        assert callable(handler)
        with pytest.raises(SystemExit) as info:
            handler(signal.SIGTERM, None)
        assert info.value.code == 143
        with sigterm_raises():  # nested: the outer handler stays
            assert signal.getsignal(signal.SIGTERM) is handler
        assert signal.getsignal(signal.SIGTERM) is handler
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_sigterm_raises_leaves_other_handlers_and_threads_alone() -> None:
    def own(signum: int, frame: object) -> None:
        pass

    previous = signal.signal(signal.SIGTERM, own)
    try:
        with sigterm_raises():
            assert signal.getsignal(signal.SIGTERM) is own
    finally:
        signal.signal(signal.SIGTERM, previous)

    seen = []

    def in_thread() -> None:
        with sigterm_raises():  # signal.signal would raise ValueError off the main thread
            seen.append(signal.getsignal(signal.SIGTERM))

    worker = threading.Thread(target=in_thread)
    worker.start()
    worker.join(timeout=5)
    assert seen == [previous]
