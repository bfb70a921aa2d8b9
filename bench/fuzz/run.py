"""Fuzz every vmmgr.v1 RPC of an in-process vmmgrd (libvirt test driver) with generated
messages (tests/libvirt/fuzz_messages.py): valid-but-hostile protobufs, raw garbage bytes and
hostile metadata. Counts status codes; the bound is 0 INTERNAL / UNKNOWN / DATA_LOSS statuses,
0 transport failures (a crashed or hung daemon) and 0 operations that ended INTERNAL.

    PYTHONPATH=. .venv/bin/python bench/fuzz/run.py [--messages 100000] [--threads 4]
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from sqlmodel import select

from tests.harness import running_daemon, test_config
from tests.libvirt.fuzz_messages import Fuzzer, RandomSource, Tally, Vocabulary
from tests.libvirt.test_fuzz_api import prepared, setup_daemon
from vmmgr.state.models import Operation
from vmmgr.v1 import host_pb2

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class Unhandled(logging.Handler):
    """Counts "unhandled error" records: a servicer crashed (the client saw INTERNAL)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.records.append(f"{record.name}: {record.getMessage()}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    logging.basicConfig(level=logging.CRITICAL)  # the daemon logs every refusal otherwise
    crashes = Unhandled()
    logging.getLogger().addHandler(crashes)

    tmp = Path(tempfile.mkdtemp(prefix="vmmgr-fuzz-"))
    node, image = prepared(tmp)
    with running_daemon(test_config(tmp)) as d:
        vocab: Vocabulary = setup_daemon(d, node, image)
        per_thread = args.messages // args.threads
        tallies = [Tally() for _ in range(args.threads)]
        fuzzers = [Fuzzer(d.channel, vocab) for _ in range(args.threads)]

        def work(i: int) -> None:
            source = RandomSource(args.seed * 1000 + i)
            for _ in range(per_thread):
                fuzzers[i].one(source, tallies[i])

        t0 = time.perf_counter()
        threads = [threading.Thread(target=work, args=(i,)) for i in range(args.threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        total = Tally()
        for part in tallies:
            total.merge(part)
        d.hosts.ListHosts(host_pb2.ListHostsRequest(), timeout=30)  # still alive
        with d.core.store.read_session() as s:
            bad_ops = list(s.exec(select(Operation).where(Operation.error_code == "INTERNAL")))
            ops = len(list(s.exec(select(Operation.id))))

    print(f"fuzz: {total.sent} messages over {len(fuzzers[0].rpcs)} RPCs in {elapsed:.0f} s "
          f"({total.sent / elapsed:.0f}/s, {args.threads} client threads, seed {args.seed})")
    for code, n in sorted(total.by_code.items(), key=lambda kv: -kv[1]):
        print(f"  {code:<20} {n:>8}")
    print(f"  operations started: {ops}; ended INTERNAL: {len(bad_ops)}")
    print(f"  INTERNAL/UNKNOWN/DATA_LOSS/transport failures: {len(total.failures)} (bound 0)")
    print(f"  unhandled servicer exceptions logged: {len(crashes.records)} (bound 0)")
    print("  daemon alive at the end: yes")
    for f in total.failures[:20]:
        print(f"FAILURE {f.method} {f.code}: {f.details}\n  request: {f.request[:400]}")
    kinds = Counter((op.kind, UUID_RE.sub("<id>", op.error_message)[:120]) for op in bad_ops)
    for (kind, message), n in kinds.most_common(20):
        print(f"OPERATION x{n} {kind}: INTERNAL {message}")
    for r in crashes.records[:20]:
        print(f"LOGGED {r}")
    return 0 if not total.failures and not bad_ops and not crashes.records else 1


if __name__ == "__main__":
    sys.exit(main())
