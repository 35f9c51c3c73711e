"""A run directory's manifest, read without the rest of the package.

Every command that takes a RUN_DIR reads its manifest first, so a wrong path is one clear
line at once: this module imports only the file checks (numpy), not torch and the stages
that `recfunnel.run` needs to load a run (~4 s on two cores).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recfunnel.artifacts import RunFileError, read_json, require_keys

MANIFEST = "manifest.json"
OLD = ".old-"  # an old run set aside while a new one moves in: .NAME.old-<random>/run


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of a run directory; a clear error when it is not one."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        hint = "create one with `recfunnel train`"
        if not path.exists():
            aside = sorted(path.parent.glob(f".{path.name}{OLD}*/run/{MANIFEST}"))
            if aside:
                hint = (
                    f"an interrupted overwrite left the previous run in {aside[0].parent}; "
                    f"move it back to {path}, or train again"
                )
        raise RunFileError(f"{path} is not a complete run directory (no {MANIFEST}); {hint}")
    manifest = read_json(manifest_path)
    require_keys(
        manifest, manifest_path, package=str, version=str, data_sha256=str, split=str, files=dict
    )
    if manifest["package"] != "recfunnel":
        raise RunFileError(f"{manifest_path} was not written by recfunnel")
    return manifest
