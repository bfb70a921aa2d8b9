"""Coverage-guided fuzzing (atheris / libFuzzer) of every vmmgr.v1 RPC on an in-process
vmmgrd over libvirt's test driver. The fuzzer's bytes drive the same message walker as
bench/fuzz/run.py (tests/libvirt/fuzz_messages.py); vmmgr's own modules are instrumented, so
inputs that reach new branches of the api, auth and services layers are kept and mutated.
An INTERNAL / UNKNOWN / DATA_LOSS status or a transport failure raises, which libFuzzer
reports as a crash with the input saved.

    PYTHONPATH=. .venv/bin/python bench/fuzz/atheris_run.py -runs=20000 [-max_len=512]
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import atheris

with atheris.instrument_imports(include=["vmmgr"]):
    from tests.harness import running_daemon, test_config
    from tests.libvirt.fuzz_messages import Fuzzer, Tally
    from tests.libvirt.test_fuzz_api import prepared, setup_daemon

T = TypeVar("T")


class ProviderSource:
    """A fuzz_messages.Source over libFuzzer's bytes."""

    def __init__(self, data: bytes) -> None:
        self.fdp = atheris.FuzzedDataProvider(data)

    def integer(self, lo: int, hi: int) -> int:
        return int(self.fdp.ConsumeIntInRange(lo, hi))

    def boolean(self) -> bool:
        return bool(self.fdp.ConsumeBool())

    def choice(self, items: Sequence[T]) -> T:
        return items[self.fdp.ConsumeIntInRange(0, len(items) - 1)]

    def text(self, max_len: int) -> str:
        return str(self.fdp.ConsumeUnicodeNoSurrogates(self.fdp.ConsumeIntInRange(0, max_len)))

    def floating(self) -> float:
        return float(self.fdp.ConsumeRegularFloat())

    def raw(self, max_len: int) -> bytes:
        return bytes(self.fdp.ConsumeBytes(self.fdp.ConsumeIntInRange(0, max_len)))


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.CRITICAL)
    tmp = Path(tempfile.mkdtemp(prefix="vmmgr-atheris-"))
    node, image = prepared(tmp)
    ctx = running_daemon(test_config(tmp))
    d = ctx.__enter__()  # libFuzzer exits the process at the end; nothing to tear down
    fuzzer = Fuzzer(d.channel, setup_daemon(d, node, image))
    tally = Tally()
    started = time.perf_counter()

    def one_input(data: bytes) -> None:
        fuzzer.one(ProviderSource(data), tally)
        if tally.failures:
            f = tally.failures[-1]
            raise RuntimeError(f"{f.method} -> {f.code}: {f.details}\n{f.request}")
        if tally.sent % 5000 == 0:
            rate = tally.sent / (time.perf_counter() - started)
            codes = ", ".join(f"{k} {v}" for k, v in sorted(tally.by_code.items()))
            print(f"atheris: {tally.sent} messages ({rate:.0f}/s); {codes}", flush=True)

    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
