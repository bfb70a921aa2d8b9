"""Compare two checkouts of vmmgr on create -> running, in one run: one vmmgrd from this
checkout (A) and one from ``OTHER`` (B, e.g. ``git worktree add --detach /tmp/old HEAD~1``),
creates alternating A, direct, B, direct (and B first every other round). Separate runs of
``run.py`` differ by more than most changes do on a shared host; here both sides see the same
host at the same moments. Prints both p50s, their ratio, and each against the direct calls
(higher than run.py's: two daemons share the host's caches here; B/A is the figure to read).

    PYTHONPATH=. .venv/bin/python bench/create/ab.py OTHER [--runs 400]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).parent))
import run as bench  # noqa: E402 - this directory's run.py: one setup for both benchmarks

from vmmgr.v1 import (  # noqa: E402
    host_pb2,
    host_pb2_grpc,
    image_pb2,
    image_pb2_grpc,
    operation_pb2,
    operation_pb2_grpc,
    vm_pb2,
    vm_pb2_grpc,
)

# more than the runs need: run.py's node (128 CPUs, cpu_ratio 4) holds 512 one-vCPU VMs
NODE = bench.NODE.replace("<cores>64</cores>", "<cores>512</cores>").replace(
    "<active>128</active>", "<active>1024</active>"
)


def start(
    checkout: Path, tmp: Path, tag: str, uri: str, base: Path
) -> tuple[subprocess.Popen[bytes], grpc.Channel]:
    port = bench.free_port()
    state = tmp / tag
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vmmgr.daemon",
            "--listen",
            f"127.0.0.1:{port}",
            "--state-dir",
            str(state / "state"),
            "--image-pool-path",
            str(state / "images"),
            "--vm-pool-path",
            str(state / "vms"),
            "--resync-interval-s",
            "3600",
            "--metrics-listen",
            "",
            "--log-level",
            "WARNING",
        ],
        cwd=checkout,
        env={**os.environ, "PYTHONPATH": str(checkout)},
    )
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(ch).result(timeout=30)
    host_pb2_grpc.HostServiceStub(ch).RegisterHost(host_pb2.RegisterHostRequest(name="b", uri=uri))
    op = (
        image_pb2_grpc.ImageServiceStub(ch)
        .ImportImage(image_pb2.ImportImageRequest(name="base", source_path=str(base)))
        .operation
    )
    operation_pb2_grpc.OperationServiceStub(ch).WaitOperation(
        operation_pb2.WaitOperationRequest(id=op.id, timeout_seconds=60)
    )
    return daemon, ch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("other", type=Path, help="the checkout to compare with (B)")
    ap.add_argument("--runs", type=int, default=400)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vmmgr-bench-ab-"))
    (tmp / "node.xml").write_text(NODE)
    base = tmp / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    uri = f"test://{tmp / 'node.xml'}"
    here = Path(__file__).resolve().parents[2]
    sides = [start(here, tmp, "a", uri, base), start(args.other.resolve(), tmp, "b", uri, base)]
    try:
        dconn, base_path, pool_name = bench.direct_setup(uri, tmp, base)
        caps = bench.HostCapabilities.from_xml(dconn.getCapabilities())
        work = Path(tempfile.mkdtemp(prefix="vmmgr-bench-seeds-", dir=bench.scratch_root()))
        via: list[list[float]] = [[], []]
        direct: list[float] = []
        for n in range(args.runs):
            for i in (0, 1) if n % 2 == 0 else (1, 0):
                ch = sides[i][1]
                vms, ops = (
                    vm_pb2_grpc.VMServiceStub(ch),
                    operation_pb2_grpc.OperationServiceStub(ch),
                )
                t0 = time.perf_counter()
                op = vms.CreateVM(
                    vm_pb2.CreateVMRequest(
                        spec=vm_pb2.VMSpec(
                            name=f"v{n}",
                            vcpus=1,
                            memory_mib=256,
                            domain_type="qemu",
                            disks=[vm_pb2.DiskSpec(image="base")],
                        )
                    )
                ).operation
                done = ops.WaitOperation(
                    operation_pb2.WaitOperationRequest(id=op.id, timeout_seconds=60)
                )
                assert done.operation.state == operation_pb2.OPERATION_STATE_SUCCEEDED
                via[i].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                bench.direct_create(dconn, pool_name, base_path, 2 * n + i, caps, work)
                direct.append(time.perf_counter() - t0)
    finally:
        for daemon, ch in sides:
            ch.close()
            daemon.terminate()
            daemon.wait(10)
    a, b, d = (statistics.median(x) * 1000 for x in (*via, direct))
    print(f"create->running, {args.runs} runs each, alternating, libvirt test driver")
    print(f"  A ({here}):  p50 {a:6.2f} ms  ({a / d:.2f}x direct)")
    print(f"  B ({args.other}):  p50 {b:6.2f} ms  ({b / d:.2f}x direct)")
    print(f"  direct libvirt calls:  p50 {d:6.2f} ms")
    print(f"  B/A: {b / a:.3f}")


if __name__ == "__main__":
    main()
