"""Which MCP responses each of istiod's debounced pushes took in, read from its log (info level): per
"Push debounce stable" line whose first config names PATTERN, the "Received" responses since the push
before it (kind and offset from the first), when the push started, and how many pushes a change cost
(consecutive pushes naming the same config, e.g. one new route's DestinationRule, ServiceEntry and
VirtualService split over two pushes).

    .venv/bin/python bench/istiod_pushes.py LOG [PATTERN]

LOG is a kept pilot-discovery.log (bench_convergence.py --keep-logs DIR: DIR/<routes>/pilot-discovery/).
PATTERN defaults to "mapped-", the new mappings of bench_convergence.py ("weighted-" for weight changes).
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path

RECEIVED = re.compile(r"^(\S+)\s+info\s+adsc\s+Received\s+type=\S+/(\w+) count=(\d+)")
PUSH = re.compile(r"^(\S+)\s+info\s+ads\s+Push debounce stable\[(\d+)\] (\d+) for config (\S+?)(?:: | and (\d+) more)")
HOST = re.compile(r"/([^/]+?)(?:-[0-9a-f]{10})?$")  # a config key's host (DestinationRule/VirtualService names end in a digest)


def _time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.rstrip("Z"))


def main(log: Path, pattern: str) -> None:
    pending: list[tuple[datetime, str]] = []
    pushes_per_host: Counter[str] = Counter()
    for line in log.read_text(errors="replace").splitlines():
        if received := RECEIVED.match(line):
            pending.append((_time(received[1]), received[2]))
            continue
        if not (push := PUSH.match(line)):
            continue
        config = push[4]
        if pattern in config:
            at = _time(push[1])
            first = pending[0][0] if pending else at
            read = " ".join(f"{kind}@+{(when - first).total_seconds():.3f}" for when, kind in pending)
            pushed = (at - first).total_seconds()
            print(f"push[{push[2]}] {config} (+{push[5] or 0} more), {push[3]} events; read: {read or '-'}; at +{pushed:.3f}")
            host = HOST.search(config)
            pushes_per_host[host[1] if host else config] += 1
        pending = []
    if pushes_per_host:
        spread = Counter(pushes_per_host.values())
        print("full pushes per change: " + ", ".join(f"{n}: {spread[n]} changes" for n in sorted(spread)))


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) == 3 else "mapped-")
