"""The documentation site: it builds with --strict (any warning fails: a broken link, a
missing page, an API object that cannot be found), offline, and the worked example of
docs/extending.md runs as written."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def test_site_builds_strict_with_the_api_reference(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    mkdocs = Path(sys.executable).with_name("mkdocs")
    done = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # The reference is generated from the docstrings: a docstring's words reach the page.
    reference = (site / "reference" / "training" / "index.html").read_text()
    assert "train_funnel" in reference and "Reading" in reference
    stages = sorted(p.name for p in (site / "stages").iterdir())
    assert stages == ["prerank", "rank", "recall", "rerank"]


def _python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


def test_the_worked_channel_example_runs_as_written(synthetic_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("RECFUNNEL_DATA_DIR", str(synthetic_dir))
    monkeypatch.setenv("RECFUNNEL_CACHE_DIR", str(tmp_path / "cache"))
    blocks = _python_blocks(DOCS / "extending.md")
    assert len(blocks) == 4
    # The blocks run as one module of their own, as a reader would paste them into a file
    # (dont_inherit: this test module's `from __future__` import must not leak into them).
    module = types.ModuleType("docs_extending_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace = module.__dict__
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for block in blocks:
            exec(compile(block, "docs/extending.md", "exec", dont_inherit=True), namespace)
    printed = dict(line.rsplit(" ", 1) for line in out.getvalue().splitlines() if line.strip())
    genre = float(printed["genre alone, recall@200:"])
    ease, merged = float(printed["ease"]), float(printed["ease + genre"])
    # The synthetic users have planted genre tastes: the channel must find far more than a
    # random 200 of the catalogue would (200 / n_items of each user's likes; over half of the
    # small synthetic catalogue, hence the modest factor).
    n_items = len(namespace["items"])
    assert genre > 1.2 * 200 / n_items
    assert 0 < ease <= 1 and 0 < merged <= 1
