"""How long Copilot took to hand each change of a bench_convergence.py run to istiod: per change printed
by `--each`, the seconds from its start to the first "Received" in istiod's kept log after it, and the
kind received. Copilot's share of a change; the rest is istiod's and the router's.

    .venv/bin/python bench/copilot_delay.py BENCH_OUTPUT LOG_DIR

BENCH_OUTPUT is what `bench_convergence.py --each --keep-logs DIR` printed (saved to a file); LOG_DIR is
DIR/<routes>/, whose pilot-discovery/pilot-discovery.log* are read. "app's service" lines are skipped
(they start at the removal they follow).
"""

from __future__ import annotations

import re
import sys
from datetime import datetime
from pathlib import Path

CHANGE = re.compile(r"^\s+(.+?) (\d+), from (\S+)Z: (\d+) ms")
RECEIVED = re.compile(r"^(\S+)\s+info\s+adsc\s+Received\s+type=\S+/(\w+) ")


def _time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.rstrip("Z"))


def main(bench_output: Path, log_dir: Path) -> None:
    received: list[tuple[datetime, str]] = []
    for log in sorted(log_dir.glob("pilot-discovery/pilot-discovery.log*")):
        for line in log.read_text(errors="replace").splitlines():
            if match := RECEIVED.match(line):
                received.append((_time(match.group(1)), match.group(2)))
    if not received:
        sys.exit(f"no 'Received' lines in {log_dir}/pilot-discovery/pilot-discovery.log*")
    received.sort()
    day = received[0][0].date().isoformat()
    for line in bench_output.read_text().splitlines():
        match = CHANGE.match(line)
        if match is None or match.group(1) == "app's service":
            continue
        kind, number, started, total = match.group(1), match.group(2), _time(f"{day}T{match.group(3)}"), int(match.group(4))
        first = next(((at, what) for at, what in received if at >= started), None)
        delay = f"{(first[0] - started).total_seconds():6.2f} s ({first[1]})" if first else "     - (none after it)"
        print(f"{kind:>12} {number:>3}: {total / 1000:7.2f} s in all, to istiod {delay}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
