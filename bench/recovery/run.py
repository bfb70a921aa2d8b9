"""Seconds from a host's death to its HA VM running on another host, and double runs (must be
0), in a two-host lab with real qemu guests. vmmgrd's recover policy does the work: failure
detection on two channels, fencing (a stand-in command), restart through batch placement.
Each trial uses a fresh daemon: the fence-storm guard allows one fence per window.

    PYTHONPATH=. .venv/bin/python bench/recovery/run.py [--trials 3] [--grace 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import libvirt

from drivers.lab import Lab
from tests.harness import running_daemon, test_config
from vmmgr.v1 import host_pb2, image_pb2, policy_pb2, policy_pb2_grpc, vm_pb2

TINY = Path(os.environ.get("VMMGR_TINY_IMAGE", "images/build/tiny.qcow2")).resolve()


def active(lab: Lab, i: int, vm_id: str) -> bool:
    try:
        conn = libvirt.open(lab.hosts[i].uri)
    except libvirt.libvirtError:
        return False
    try:
        return bool(conn.lookupByUUIDString(vm_id).isActive())
    except libvirt.libvirtError:
        return False
    finally:
        conn.close()


def one_trial(lab: Lab, tmp: Path, trial: int, args: argparse.Namespace) -> tuple[float, int]:
    victim, other = trial % 2, 1 - trial % 2
    cfg = test_config(
        tmp,
        migration_unsafe=True,
        default_domain_type="qemu",
        recover_heartbeat_timeout_s=args.heartbeat_timeout,
        recover_grace_s=args.grace,
        fence_command=["true", "{host}"],
        fence_max_share=0.5,
        keepalive_interval_s=1,
        keepalive_count=2,
    )
    with running_daemon(cfg) as d:
        for i, h in enumerate(lab.hosts):
            d.hosts.RegisterHost(host_pb2.RegisterHostRequest(name=f"h{i}", uri=h.uri))
        d.wait(
            d.images.ImportImage(
                image_pb2.ImportImageRequest(name="tiny", source_path=str(TINY))
            ).operation
        )
        policy_pb2_grpc.PolicyServiceStub(d.channel).UpdatePolicy(
            policy_pb2.UpdatePolicyRequest(name="recover", enabled=True, interval_seconds=1)
        )
        op = d.wait(
            d.vms.CreateVM(
                vm_pb2.CreateVMRequest(
                    spec=vm_pb2.VMSpec(
                        name=f"ha-{trial}",
                        vcpus=1,
                        memory_mib=128,
                        host=f"h{victim}",
                        ha=True,
                        disks=[vm_pb2.DiskSpec(image="tiny")],
                    )
                )
            ).operation,
            timeout=180,
        )
        if "vm_id" not in op.result:
            raise SystemExit(f"create on h{victim} failed: {op.error}")
        vm_id = op.result["vm_id"]
        killed = time.monotonic()
        lab.kill_host(victim)
        while time.monotonic() - killed < 120:
            vm = d.vms.GetVM(vm_pb2.GetVMRequest(vm=vm_id)).vm
            if vm.host == f"h{other}" and vm.state == vm_pb2.VM_STATE_RUNNING:
                break
            time.sleep(0.2)
        took = time.monotonic() - killed
        lab.start_host(victim)  # the dead host comes back: the VM must not run twice
        time.sleep(2)
        double = int(active(lab, victim, vm_id) and active(lab, other, vm_id))
        print(
            f"trial {trial}: h{victim} killed -> running on h{other} after {took:.1f} s "
            f"({took - args.grace:.1f} s after the grace period)",
            flush=True,
        )
        d.wait(d.vms.DeleteVM(vm_pb2.DeleteVMRequest(vm=vm_id)).operation, timeout=120)
    return took, double


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--grace", type=float, default=5.0)
    ap.add_argument("--heartbeat-timeout", type=float, default=2.0)
    args = ap.parse_args()
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    tmp = Path(tempfile.mkdtemp(prefix="vmmgr-bench-recovery-"))
    lab = Lab(
        2,
        base_dir="/tmp/vmmgr-lab-bench-recovery",
        subnet="10.213.11.0/24",
        prefix="vmlabr",
        lock_timeout_s=600,
    ).up()
    times: list[float] = []
    doubles = 0
    try:
        for trial in range(args.trials):
            took, double = one_trial(lab, Path(tempfile.mkdtemp(dir=tmp)), trial, args)
            times.append(took)
            doubles += double
    finally:
        lab.down()
    med = statistics.median(times)
    print(
        f"recovery: median {med:.1f} s from kill to running elsewhere; "
        f"{med - args.grace:.1f} s after the {args.grace:g} s grace period "
        f"(target <= 15 s, ratio {(med - args.grace) / 15:.2f}x); double runs: {doubles} "
        "(must be 0)"
    )


if __name__ == "__main__":
    main()
