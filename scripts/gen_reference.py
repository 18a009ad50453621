"""Write docs/reference.md and schemas/<Kind>.json from the domain models.

    python scripts/gen_reference.py           # rewrite the files
    python scripts/gen_reference.py --check   # exit 1 if any is out of date

The text comes from the pure functions ``shoal.domain.reference.render`` and
``shoal.domain.schema.schema_text``; only this script touches the disk.
"""

from __future__ import annotations

import sys
from pathlib import Path

from shoal.domain.reference import render
from shoal.domain.schema import known_kinds, schema_text

ROOT = Path(__file__).resolve().parents[1]


def expected() -> dict[Path, str]:
    files = {ROOT / "docs" / "reference.md": render()}
    for kind in known_kinds():
        files[ROOT / "schemas" / f"{kind}.json"] = schema_text(kind)
    return files


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for path, text in expected().items():
        current = path.read_text(encoding="utf-8") if path.is_file() else None
        if current == text:
            continue
        stale.append(path.relative_to(ROOT))
        if not check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    verb = "out of date" if check else "written"
    for path in stale:
        print(f"{path}: {verb}")
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
