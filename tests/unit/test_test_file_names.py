"""pytest imports test modules by basename (rootdir-relative, no packages): two test files with one name in
different folders stop the whole run at collection, so every test file's name is unique in tests/."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_every_test_file_name_is_unique() -> None:
    names = Counter(path.name for path in TESTS.rglob("test_*.py"))
    assert len(names) > 50  # the suite's files were found
    assert [name for name, count in names.items() if count > 1] == []
