"""Fetch a GroupLens MovieLens archive, verify it against the published MD5, unpack it atomically.

Nothing here trusts a file it did not verify: a download lands in a temp file that only
replaces the destination once its size and MD5 check out, and an extracted folder counts
as complete only when its marker file (written last) names the archive's MD5 and each
required file still has the size the marker records.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

from recfunnel import __version__
from recfunnel.atomic import sigterm_raises
from recfunnel.data.datasets import DEFAULT_DATASET, dataset_spec
from recfunnel.errors import DownloadError

log = logging.getLogger(__name__)

_ML1M = dataset_spec("ml-1m")
ML1M_URL = _ML1M.url
ML1M_MD5 = _ML1M.md5  # the MD5 GroupLens publishes for ml-1m.zip (see data.datasets)

REQUIRED_FILES = _ML1M.required_files  # ("ratings.dat", "users.dat", "movies.dat")
ARCHIVE_FOLDER = _ML1M.archive_folder  # the one folder inside ml-1m.zip
COMPLETE_MARKER = ".complete"


def local_copy_hint(files: tuple[str, ...] = REQUIRED_FILES) -> str:
    """How to use a local copy of a data set holding `files` instead of downloading it."""
    return (
        "To use a local copy instead, set RECFUNNEL_DATA_DIR or pass --data-dir to a folder "
        f"holding {', '.join(files[:-1])} and {files[-1]}."
    )


LOCAL_COPY_HINT = local_copy_hint()

_CHUNK = 1 << 20


def file_md5(path: Path) -> str:
    """Hex MD5 of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(
    url: str, dest: Path, md5: str, *, progress: bool = True, timeout: float = 60
) -> Path:
    """Download `url` to `dest` unless `dest` already has MD5 `md5`; returns `dest`.

    The body streams into a temp file next to `dest`, which replaces `dest` only after
    the size (when the server sends Content-Length) and the MD5 match. Any failure
    leaves neither a partial file nor a temp file and raises DownloadError; so does a
    SIGTERM, which raises SystemExit(143) once the temp file is gone (see `sigterm_raises`).
    """
    dest = Path(dest)
    md5 = md5.lower()
    if dest.is_file():
        if file_md5(dest) == md5:
            log.info("%s is already downloaded (MD5 %s)", dest, md5)
            return dest
        # A stale or half-written copy from elsewhere: never trust it, fetch a fresh one.
        log.warning("%s does not have MD5 %s; downloading it again", dest, md5)
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)

    with sigterm_raises():
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                got_md5, got_sha256 = _stream(url, out, progress=progress, timeout=timeout)
            if got_md5 != md5:
                raise DownloadError(
                    f"{url} failed its checksum: MD5 {got_md5}, expected {md5} "
                    f"(corrupted transfer or a changed file). {LOCAL_COPY_HINT}"
                )
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    log.info("downloaded %s to %s (MD5 %s, SHA-256 %s)", url, dest, got_md5, got_sha256)
    return dest


def _stream(url: str, out, *, progress: bool, timeout: float) -> tuple[str, str]:
    """Copy the body of `url` into the binary file `out`; returns its (MD5, SHA-256)."""
    md5, sha256 = hashlib.md5(), hashlib.sha256()
    request = urllib.request.Request(url, headers={"User-Agent": f"recfunnel/{__version__}"})
    received = 0
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            expected = _content_length(response)
            with tqdm(
                total=expected,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=url.rsplit("/", 1)[-1] or url,
                disable=not progress,
            ) as bar:
                # http.client returns b"" when the server closes early instead of raising,
                # so a short body is caught by the size check below, not here.
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    md5.update(chunk)
                    sha256.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as exc:
        raise DownloadError(
            f"could not download {url}: HTTP {exc.code} {exc.reason}. {LOCAL_COPY_HINT}"
        ) from exc
    except urllib.error.URLError as exc:
        raise DownloadError(f"could not download {url}: {exc.reason}. {LOCAL_COPY_HINT}") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise DownloadError(
            f"could not download {url}: {type(exc).__name__}: {exc}. {LOCAL_COPY_HINT}"
        ) from exc
    if expected is not None and received != expected:
        raise DownloadError(
            f"could not download {url}: got {received:,} of {expected:,} bytes "
            f"(connection closed early). {LOCAL_COPY_HINT}"
        )
    return md5.hexdigest(), sha256.hexdigest()


def _content_length(response) -> int | None:
    value = response.headers.get("Content-Length")
    return int(value) if value is not None and value.strip().isdigit() else None


def fetch_movielens(
    cache_dir: Path,
    *,
    dataset: str = DEFAULT_DATASET,
    url: str | None = None,
    md5: str | None = None,
    progress: bool = True,
) -> Path:
    """Make sure `cache_dir/<dataset>` holds the unpacked archive; returns that folder.

    `url` and `md5` default to the data set's (`data.datasets`). Downloads
    `cache_dir/<dataset>.zip` if needed (see `download_file`), then extracts the files
    directly under its one folder (`ml-10M100K/` for ml-10m) into a temp folder and renames
    it into place, so an interrupted run never leaves a folder that looks complete; a SIGTERM
    meanwhile removes the temp files before the process exits (see `sigterm_raises`). A
    corrupt archive, one without the data set's files, or a data set whose published MD5
    is unknown raises DownloadError.
    """
    spec = dataset_spec(dataset)
    url = url or spec.url
    md5 = md5 or spec.md5
    hint = local_copy_hint(spec.required_files)
    if md5 is None:
        # Never download what cannot be verified: a changed or truncated archive would be
        # parsed as if it were the published data set.
        raise DownloadError(
            f"no published MD5 is known for {spec.archive} ({spec.md5_source}), so it is not "
            f"downloaded. {hint}"
        )
    cache_dir = Path(cache_dir)
    md5 = md5.lower()
    target = cache_dir / spec.name
    required = spec.required_files
    if _is_complete(target, md5, required):
        return target

    cache_dir.mkdir(parents=True, exist_ok=True)
    with sigterm_raises():
        archive = download_file(url, cache_dir / spec.archive, md5, progress=progress)
        tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", suffix=".tmp", dir=cache_dir))
        try:
            _extract(archive, tmp, spec.archive_folder, required, spec.name, hint)
            _write_marker(tmp, md5, required)
            if target.exists():  # an interrupted or older extraction: replace it
                shutil.rmtree(target)
            try:
                os.replace(tmp, target)
            except OSError:
                # Another process finished the same extraction first; use its copy.
                if not _is_complete(target, md5, required):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("extracted %s to %s", archive, target)
    return target


def _write_marker(folder: Path, md5: str, required: tuple[str, ...] = REQUIRED_FILES) -> None:
    """Mark `folder` complete: JSON with the archive's MD5 and each required file's size."""
    sizes = {name: (folder / name).stat().st_size for name in required}
    (folder / COMPLETE_MARKER).write_text(json.dumps({"md5": md5, "sizes": sizes}) + "\n")


def _is_complete(folder: Path, md5: str, required: tuple[str, ...] = REQUIRED_FILES) -> bool:
    """Whether `folder`'s marker names archive MD5 `md5` and each required file has its size.

    An old-style marker (the bare MD5), an unreadable one, or a file since truncated or
    replaced by one of another size all mean: extract again.
    """
    try:
        marker = json.loads((folder / COMPLETE_MARKER).read_text())
        if marker["md5"] != md5:
            return False
        for name in required:
            path, size = folder / name, marker["sizes"][name]
            if type(size) is not int or not path.is_file() or path.stat().st_size != size:
                return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def _extract(
    archive: Path,
    dest: Path,
    folder_name: str = ARCHIVE_FOLDER,
    required: tuple[str, ...] = REQUIRED_FILES,
    dataset: str = "ml-1m",
    hint: str = LOCAL_COPY_HINT,
) -> None:
    """Copy the files directly under `folder_name/` in `archive` into `dest` (nothing else)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = {}
            for info in zf.infolist():
                folder, _, name = info.filename.partition("/")
                # Only plain files directly in the folder: this also rules out "../" paths.
                if folder == folder_name and name and "/" not in name and not info.is_dir():
                    members[name] = info
            missing = [name for name in required if name not in members]
            if missing:
                raise DownloadError(
                    f"{archive} has no {', '.join(f'{folder_name}/{m}' for m in missing)}; "
                    f"it is not the MovieLens-{dataset.removeprefix('ml-').upper()} archive. {hint}"
                )
            for name, info in members.items():
                # zipfile checks each member's CRC while reading and raises BadZipFile.
                with zf.open(info) as src, open(dest / name, "wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise DownloadError(f"{archive} is not a valid zip archive ({exc}). {hint}") from exc
