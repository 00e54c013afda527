"""Per-module mutmut 3 figures from mutants/**/*.meta: python summary.py [--survivors] (run in benchmarks/mutation).

Reads mutmut's own result files; the statuses are mutmut's (mutmut.stats.status_by_exit_code).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code

COLUMNS = ("killed", "survived", "timeout", "no tests", "suspicious", "segfault", "not checked")


def main() -> None:
    root = Path("mutants")
    rows, survivors = [], []
    for meta in sorted(root.rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        if not codes:
            continue
        module = str(meta.relative_to(root / "src"))[: -len(".py.meta")].replace("/", ".")
        module = module.removeprefix("slotkeeper.")  # source_paths is src/slotkeeper: every module is in it
        counts = Counter(status_by_exit_code[code] for code in codes.values())
        rows.append((module, len(codes), counts))
        survivors += sorted(k for k, code in codes.items() if status_by_exit_code[code] in ("survived", "no tests"))
    total = Counter()
    print(f"| module | mutants | " + " | ".join(COLUMNS) + " |")
    print("|---|---:|" + "---:|" * len(COLUMNS))
    for module, n, counts in rows:
        total.update(counts)
        print(f"| {module} | {n} | " + " | ".join(str(counts.get(c, 0)) for c in COLUMNS) + " |")
    print(f"| **total** | {sum(n for _, n, _ in rows)} | " + " | ".join(str(total.get(c, 0)) for c in COLUMNS) + " |")
    if "--survivors" in sys.argv:
        print()
        print("\n".join(survivors))


if __name__ == "__main__":
    main()
