"""Soak: 50 concurrent clients mix reads and writes against a vmmgrd subprocess (tokens
required, so every call is authenticated and every write audited) on libvirt's test driver,
for a bounded time. Bounds: 0 errors; daemon RSS at the end within 10% of RSS after warm-up.

    PYTHONPATH=. .venv/bin/python bench/soak/run.py [--clients 50] [--warmup 20] [--duration 120]
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from prometheus_client.parser import text_string_to_metric_families

from vmmgr.cli.config import ClientConfig, make_channel
from vmmgr.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    event_pb2,
    event_pb2_grpc,
    host_pb2,
    host_pb2_grpc,
    image_pb2,
    image_pb2_grpc,
    operation_pb2,
    operation_pb2_grpc,
    vm_pb2,
    vm_pb2_grpc,
)

NODE = """<node><cpu><nodes>1</nodes><sockets>1</sockets><cores>64</cores><threads>2</threads>
<active>128</active><mhz>2000</mhz><model>x86_64</model></cpu><memory>1073741824</memory></node>"""
PROJECTS = ("alpha", "beta", "gamma", "delta", "epsilon")
SUCCEEDED = operation_pb2.OPERATION_STATE_SUCCEEDED


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@dataclass
class Stats:
    reads: int = 0
    writes: int = 0
    errors: list[str] = field(default_factory=list)
    read_s: list[float] = field(default_factory=list)
    write_s: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Client:
    """One simulated user: an operator of one project, owning one VM name."""

    def __init__(self, n: int, endpoint: str, token: str, stats: Stats) -> None:
        self.n = n
        self.channel = make_channel(ClientConfig(endpoint=endpoint, token=token))
        self.vms = vm_pb2_grpc.VMServiceStub(self.channel)
        self.ops = operation_pb2_grpc.OperationServiceStub(self.channel)
        self.hosts = host_pb2_grpc.HostServiceStub(self.channel)
        self.events = event_pb2_grpc.EventServiceStub(self.channel)
        self.stats = stats
        self.rng = random.Random(n)
        self.vm_id = ""

    def timed(self, write: bool, what: str, fn: Callable[[], object]) -> object:
        t0 = time.perf_counter()
        try:
            result = fn()
        except grpc.RpcError as exc:
            with self.stats.lock:
                self.stats.errors.append(f"client {self.n} {what}: {exc.code().name} "
                                         f"{exc.details()}")
            return None
        dt = time.perf_counter() - t0
        with self.stats.lock:
            if write:
                self.stats.writes += 1
                self.stats.write_s.append(dt)
            else:
                self.stats.reads += 1
                self.stats.read_s.append(dt)
        return result

    def wait(self, op: operation_pb2.Operation, what: str) -> operation_pb2.Operation | None:
        done = self.timed(False, f"wait {what}", lambda: self.ops.WaitOperation(
            operation_pb2.WaitOperationRequest(id=op.id, timeout_seconds=120), timeout=130))
        if done is None:
            return None
        assert isinstance(done, operation_pb2.WaitOperationResponse)
        if done.operation.state != SUCCEEDED:
            with self.stats.lock:
                self.stats.errors.append(f"client {self.n} {what}: {done.operation.error}")
            return None
        return done.operation

    def read(self) -> None:
        k = self.rng.randrange(6)
        if k == 0:
            self.timed(False, "ListVMs", lambda: self.vms.ListVMs(
                vm_pb2.ListVMsRequest(page_size=50), timeout=30))
        elif k == 1 and self.vm_id:
            self.timed(False, "GetVM", lambda: self.vms.GetVM(
                vm_pb2.GetVMRequest(vm=self.vm_id), timeout=30))
        elif k == 2:
            self.timed(False, "ListHosts", lambda: self.hosts.ListHosts(
                host_pb2.ListHostsRequest(), timeout=30))
        elif k == 3:
            self.timed(False, "ListOperations", lambda: self.ops.ListOperations(
                operation_pb2.ListOperationsRequest(page_size=20), timeout=30))
        elif k == 4:
            self.timed(False, "ListEvents", lambda: self.events.ListEvents(
                event_pb2.ListEventsRequest(limit=20), timeout=30))
        else:
            self.timed(False, "ExplainPlacement", lambda: self.vms.ExplainPlacement(
                vm_pb2.ExplainPlacementRequest(spec=self.spec()), timeout=30))

    def spec(self) -> vm_pb2.VMSpec:
        return vm_pb2.VMSpec(name=f"soak-{self.n}", vcpus=1, memory_mib=64,
                             disks=[vm_pb2.DiskSpec(image="base")],
                             description=f"soak client {self.n} <&>")

    def write(self) -> None:
        if not self.vm_id:
            resp = self.timed(True, "CreateVM", lambda: self.vms.CreateVM(
                vm_pb2.CreateVMRequest(spec=self.spec()), timeout=30))
            if isinstance(resp, vm_pb2.CreateVMResponse):
                done = self.wait(resp.operation, "create")
                if done is not None:
                    self.vm_id = done.result["vm_id"]
            return
        ref = self.vm_id
        k = self.rng.randrange(5)
        if k == 0:
            resp = self.timed(True, "DeleteVM", lambda: self.vms.DeleteVM(
                vm_pb2.DeleteVMRequest(vm=ref), timeout=30))
            if isinstance(resp, vm_pb2.DeleteVMResponse) and self.wait(resp.operation,
                                                                       "delete"):
                self.vm_id = ""
        elif k == 1:
            self.timed(True, "StopVM+StartVM", lambda: (
                self.vms.StopVM(vm_pb2.StopVMRequest(vm=ref, timeout_seconds=5), timeout=30),
                self.vms.StartVM(vm_pb2.StartVMRequest(vm=ref), timeout=30)))
        elif k == 2:
            self.timed(True, "SuspendVM+ResumeVM", lambda: (
                self.vms.SuspendVM(vm_pb2.SuspendVMRequest(vm=ref), timeout=30),
                self.vms.ResumeVM(vm_pb2.ResumeVMRequest(vm=ref), timeout=30)))
        else:
            self.timed(True, "RebootVM", lambda: self.vms.RebootVM(
                vm_pb2.RebootVMRequest(vm=ref), timeout=30))

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            if self.rng.random() < 0.3:
                self.write()
            else:
                self.read()
        self.channel.close()


def pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] * 1000 if xs else 0.0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--warmup", type=float, default=20.0)
    ap.add_argument("--duration", type=float, default=120.0)
    ap.add_argument("--malloc-arena-max", type=int, default=2,
                    help="MALLOC_ARENA_MAX for the daemon, as packaging/vmmgrd.service sets it "
                         "(0 = glibc's default of 8 per core)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="vmmgr-soak-"))
    node = tmp / "node.xml"
    node.write_text(NODE)
    base = tmp / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    port, metrics_port = free_port(), free_port()
    token_file = tmp / "admin.token"
    env = dict(os.environ)
    if args.malloc_arena_max:
        env["MALLOC_ARENA_MAX"] = str(args.malloc_arena_max)
    daemon = subprocess.Popen([
        sys.executable, "-m", "vmmgr.daemon", "--listen", f"127.0.0.1:{port}",
        "--state-dir", str(tmp / "state"), "--image-pool-path", str(tmp / "images"),
        "--vm-pool-path", str(tmp / "vms"), "--resync-interval-s", "3600",
        "--log-level", "WARNING", "--auth", "on", "--admin-token-file", str(token_file),
        "--metrics-listen", f"127.0.0.1:{metrics_port}", "--rpc-workers", "32",
    ], env=env)
    try:
        endpoint = f"127.0.0.1:{port}"
        for _ in range(300):
            if token_file.exists():
                break
            time.sleep(0.1)
        admin_ch = make_channel(ClientConfig(endpoint=endpoint, token_file=str(token_file)))
        grpc.channel_ready_future(admin_ch).result(timeout=30)
        host_pb2_grpc.HostServiceStub(admin_ch).RegisterHost(
            host_pb2.RegisterHostRequest(name="s1", uri=f"test://{node}"))
        op = image_pb2_grpc.ImageServiceStub(admin_ch).ImportImage(
            image_pb2.ImportImageRequest(name="base", source_path=str(base))).operation
        operation_pb2_grpc.OperationServiceStub(admin_ch).WaitOperation(
            operation_pb2.WaitOperationRequest(id=op.id, timeout_seconds=60))
        admin = admin_pb2_grpc.AdminServiceStub(admin_ch)
        tokens = []
        for p in PROJECTS:
            admin.CreateProject(admin_pb2.CreateProjectRequest(project=admin_pb2.Project(
                name=p, quota=admin_pb2.Quota(vcpus=64))))
            tokens.append(admin.CreateToken(admin_pb2.CreateTokenRequest(
                name=f"op-{p}", project=p, role=admin_pb2.ROLE_OPERATOR)).secret)

        stats = Stats()
        stop = threading.Event()
        clients = [Client(n, endpoint, tokens[n % len(tokens)], stats)
                   for n in range(args.clients)]
        threads = [threading.Thread(target=c.run, args=(stop,)) for c in clients]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        time.sleep(args.warmup)
        rss_warm = rss_kib(daemon.pid)
        with stats.lock:
            calls_warm = stats.reads + stats.writes
        samples = [rss_warm]
        end = time.perf_counter() + args.duration
        while time.perf_counter() < end:
            time.sleep(min(10.0, max(0.0, end - time.perf_counter())))
            samples.append(rss_kib(daemon.pid))
        rss_end = rss_kib(daemon.pid)
        with stats.lock:
            calls_end = stats.reads + stats.writes
        stop.set()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
            families = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
        served = sum(s.value for s in families["vmmgr_rpc_requests"].samples
                     if s.name.endswith("_total"))
        in_flight = families["vmmgr_rpc_in_flight"].samples[0].value
        audited = len(admin.ListAuditRecords(admin_pb2.ListAuditRecordsRequest(
            limit=10_000)).records)
        admin_ch.close()
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)

    growth = (rss_end - rss_warm) / rss_warm
    print(f"soak: {args.clients} clients, {elapsed:.0f} s ({args.warmup:.0f} s warm-up + "
          f"{args.duration:.0f} s measured), tokens required, test driver, "
          f"MALLOC_ARENA_MAX={args.malloc_arena_max or 'default'}")
    print(f"  calls: {stats.reads} reads, {stats.writes} writes "
          f"({(calls_end - calls_warm) / args.duration:.0f} calls/s after warm-up)")
    print(f"  read latency  p50 {pct(stats.read_s, 0.5):7.1f} ms  "
          f"p99 {pct(stats.read_s, 0.99):7.1f} ms")
    print(f"  write latency p50 {pct(stats.write_s, 0.5):7.1f} ms  "
          f"p99 {pct(stats.write_s, 0.99):7.1f} ms")
    print(f"  errors: {len(stats.errors)} (bound 0)")
    print(f"  daemon RSS: {rss_warm / 1024:.1f} MiB after warm-up, {rss_end / 1024:.1f} MiB at "
          f"the end: {growth:+.1%} (bound +10%); samples MiB: "
          f"{' '.join(f'{s / 1024:.0f}' for s in samples)}")
    print(f"  server-side RPCs counted by /metrics: {served:.0f}; in flight at the end: "
          f"{in_flight:.0f}; audit rows (first 10,000 page): {audited}")
    for e in stats.errors[:20]:
        print(f"ERROR {e}")
    return 0 if not stats.errors and growth <= 0.10 else 1


if __name__ == "__main__":
    sys.exit(main())
