"""CI regression guard: the funnel's end-to-end NDCG@20 on test must not fall below
popularity's 0.1949 (the protocol's reference). A floor that catches a broken pipeline, not
the target the project aims for."""

import json
import sys
from pathlib import Path

FLOOR = 0.1949

report = json.loads((Path(sys.argv[1]) / "report.json").read_text())
assert report["part"] == "test", f"the guard reads a test report, got {report['part']!r}"
ndcg = report["stages"]["rerank"]["ndcg@20"]
print(f"end-to-end NDCG@20 on test: {ndcg:.4f} (floor {FLOOR})")
if ndcg < FLOOR:
    sys.exit(f"regression: end-to-end NDCG@20 {ndcg:.4f} is below popularity's {FLOOR}")
