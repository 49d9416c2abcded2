"""Print `name locked -> installed` for each locked package this environment has at another version.

A universal lock may pin a package once per Python version (numpy: one release below 3.12, a
newer one above), so any of its pinned versions counts as locked."""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from importlib.metadata import PackageNotFoundError, version

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def main(lock_path: str) -> int:
    locked: defaultdict[str, list[str]] = defaultdict(list)
    with open(lock_path, encoding="utf-8") as lock:
        for line in lock:
            match = PIN.match(line)
            if match is not None:
                locked[match[1]].append(match[2])
    for name, pins in sorted(locked.items()):
        try:
            installed = version(name)
        except PackageNotFoundError:
            continue  # a marker leaves it out here (audioop-lts below Python 3.13)
        if installed not in pins:
            print(f"{name} {' or '.join(pins)} -> {installed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
