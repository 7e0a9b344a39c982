"""What the backend instances of a bench run logged: event-loop stalls and collector pauses.

The instances log JSON lines (structlog); ``event_loop_stalled`` comes from the loop-lag
watchdog, ``gc_pause`` from ``ocpp_server.app.GcPauses`` (wall and CPU time of a collection).
"""

from __future__ import annotations

import collections
import contextlib
import json
from pathlib import Path


def summarise_logs(tmp: Path) -> None:
    """What the backend(s) warned about: event-loop stalls and garbage-collector pauses."""
    for log in sorted(tmp.glob("*.log")):
        stalls, gcs, gc_cpu, gens = [], [], [], [0, 0, 0]
        others: collections.Counter[str] = collections.Counter()
        for line in log.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:  # not structlog's: asyncio or a library writing to stderr
                others[line[:100]] += 1
                continue
            others[str(event.get("event"))[:100]] += 1
            with contextlib.suppress(ValueError, KeyError, TypeError):
                if event["event"] == "gc_pause":
                    gcs.append(int(event["ms"]))
                    gc_cpu.append(int(event["cpu_ms"]))
                    gens[int(event["generation"])] += 1
                elif event["event"] == "event_loop_stalled":
                    stalls.append(int(event["lag_ms"]))
        if stalls or gcs:
            print(f"  {log.name}: {len(stalls)} stalls > 200 ms logged"
                  f" (max {max(stalls, default=0)}"
                  f" ms); {len(gcs)} GC pauses > 50 ms (max {max(gcs, default=0)} ms,"
                  f" total {sum(gcs)} ms of which CPU {sum(gc_cpu)} ms; by generation"
                  f" 0/1/2: {gens})")
        if others:
            print(f"  {log.name}, most frequent lines: {others.most_common(6)}")
