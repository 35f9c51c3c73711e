"""Reading a run directory's files, with one clear error per damaged file.

A run is only JSON, NPY and torch state dicts. Each reader here checks the file's type and
shape against what the caller expects and turns every failure (missing, cut short, edited,
wrong shape) into a `RunFileError` that names the file and says what is wrong, instead of
a `RuntimeError` or `JSONDecodeError` from deep inside numpy or torch.

`digest_files` and `verify_files` are the manifest's side: the manifest records the size
and SHA-256 of every file a run holds, and loading checks them before reading anything.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recfunnel.errors import RecfunnelError

if TYPE_CHECKING:
    import torch


class RunFileError(RecfunnelError):
    """A file of a run directory is missing, damaged or does not fit the rest of the run."""


def read_json(path: Path, expect: type = dict) -> Any:
    """The JSON value in `path`, which must be of type `expect` (dict by default)."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunFileError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunFileError(f"{path} is not readable JSON ({error})") from None
    if not isinstance(value, expect):
        raise RunFileError(
            f"{path} holds a JSON {type(value).__name__}, expected a {expect.__name__}"
        )
    return value


def require_keys(value: dict[str, Any], path: Path, **types: type | tuple[type, ...]) -> None:
    """Each key of `types` is in `value` with a value of that type (bool is not an int)."""
    for key, tp in types.items():
        item = value.get(key)
        if key not in value or (isinstance(item, bool) and bool not in _as_tuple(tp)):
            raise RunFileError(f"{path} has no valid {key!r}")
        if not isinstance(item, tp):
            raise RunFileError(f"{path}: {key!r} is {item!r}, expected {_names(tp)}")


def load_array(
    path: Path, *, shape: tuple[int | None, ...] | None = None, kind: str | None = None
) -> np.ndarray:
    """The array in the .npy file `path` (no pickle). `shape` may hold None for a free
    axis; `kind` is a numpy dtype kind such as "i" (integers) or "f" (floats)."""
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise RunFileError(f"{path} is missing") from None
    except (OSError, ValueError, EOFError) as error:
        raise RunFileError(f"{path} is not a readable .npy array ({error})") from None
    if kind is not None and array.dtype.kind not in kind:
        raise RunFileError(f"{path} holds {array.dtype} values, expected kind {kind!r}")
    if shape is not None and (
        array.ndim != len(shape)
        or any(
            want is not None and got != want for got, want in zip(array.shape, shape, strict=False)
        )
    ):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise RunFileError(f"{path} has shape {array.shape}, expected {want}")
    return array


def load_weights(module: torch.nn.Module, path: Path, *, built_from: Iterable[Path] = ()) -> None:
    """Load the state dict in `path` (weights_only=True) into `module`, strictly: every
    tensor must exist with the shape the module was built with from its config files
    `built_from` (named in the error when they disagree)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RunFileError(f"{path} is missing") from None
    except Exception as error:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        raise RunFileError(f"{path} is not a readable state dict ({_first_line(error)})") from None
    if not isinstance(state, dict):
        raise RunFileError(f"{path} holds a {type(state).__name__}, expected a state dict")
    try:
        module.load_state_dict(state)
    except (RuntimeError, TypeError, KeyError) as error:
        sources = " and ".join(str(p) for p in built_from) or "its config"
        lines = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
        raise RunFileError(
            f"{path} does not fit the model built from {sources} "
            f"({lines[0] if lines else _first_line(error)})"
        ) from None
    module.eval()


# --- the manifest's file list ---------------------------------------------------------------


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def digest_files(directory: Path, skip: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """{relative posix path: {"bytes": size, "sha256": hex}} of every file below
    `directory`, sorted, leaving out the relative paths in `skip`."""
    directory = Path(directory)
    skipped = set(skip)
    out = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        name = path.relative_to(directory).as_posix()
        if name not in skipped:
            out[name] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
    return out


def verify_files(directory: Path, files: dict[str, Any], *, where: str) -> None:
    """Every file listed in `files` (see `digest_files`) exists below `directory` with its
    recorded size and checksum; `where` names the list in errors (e.g. the manifest)."""
    for name, entry in files.items():
        if not (isinstance(entry, dict) and {"bytes", "sha256"} <= set(entry)):
            raise RunFileError(f"{where}: the entry of {name!r} is not {{bytes, sha256}}")
        path = Path(directory) / name
        if not path.is_file():
            raise RunFileError(f"{path} is missing (listed in {where}); train the run again")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise RunFileError(
                f"{path} is damaged: {size:,} bytes, {where} says {entry['bytes']:,} "
                "(cut short or edited after training); train the run again"
            )
        if file_sha256(path) != entry["sha256"]:
            raise RunFileError(
                f"{path} is damaged: its checksum differs from {where} (edited after "
                "training); train the run again"
            )


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _as_tuple(tp: type | tuple[type, ...]) -> tuple[type, ...]:
    return tp if isinstance(tp, tuple) else (tp,)


def _names(tp: type | tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in _as_tuple(tp))
