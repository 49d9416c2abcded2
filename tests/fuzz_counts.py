"""How many fuzz cases each surface ran in this test session (one counter for every fuzz module).

`report()` prints them; with CALLBOT_FUZZ_COUNTS_FILE set it also writes them there as JSON.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

CASES: Counter[str] = Counter()  # how many generated cases each fuzzer ran
KINDS: Counter[str] = Counter()  # what they were: openings, signatures, HTTP answers


def report(prefixes: tuple[str, ...] = ()) -> None:
    print(f"\nfuzz cases run so far, per surface: {dict(CASES)} (total {sum(CASES.values())})")
    for kind, count in sorted(KINDS.items()):
        if not prefixes or kind.startswith(prefixes):
            print(f"  {count:4d}  {kind}")
    path = os.environ.get("CALLBOT_FUZZ_COUNTS_FILE")
    if path:
        Path(path).write_text(json.dumps({"cases": dict(CASES), "total": sum(CASES.values())}, indent=1))
