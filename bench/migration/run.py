#!/usr/bin/env python3
"""Live migration through vmmgr's driver vs bare ``virsh migrate --live``, same guest, same lab.

    .venv/bin/python bench/migration/run.py [--runs 5] [--memory-mib 128]

Brings up its own two-host lab (prefix vmlabb), boots one tiny TCG guest on a shared disk and
migrates it back and forth, alternating the two tools (and which goes first in each pair) so
that drift in machine load hits both alike. Per run: wall time of the whole call, libvirt's own
elapsed time and the guest downtime, both from the destination's completed job stats (the same
source for both tools). Prints medians and the vmmgr/virsh ratios (target <= 1.1x).

The peer is virsh as an operator would run it (a process per migration: connect, migrate,
exit); vmmgr's driver runs inside a daemon whose connections are already open, so the wall
ratio also shows what that saves. The elapsed/downtime ratios compare the migrations proper.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass

import libvirt

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from drivers.hypervisor.libvirt.migration import LiveMigrationOptions, migrate_live  # noqa: E402
from drivers.hypervisor.libvirt.xml.base import to_string  # noqa: E402
from drivers.hypervisor.libvirt.xml.storage import BackingStore, StorageVolume  # noqa: E402
from drivers.lab import Lab  # noqa: E402
from drivers.lab.guest import TinyGuest, TinyImage, domain_xml  # noqa: E402
from drivers.lab.heartbeat import HeartbeatReader  # noqa: E402


@dataclass
class Run:
    tool: str
    direction: str
    wall_ms: float
    elapsed_ms: int
    downtime_ms: int


def completed_stats(conn: libvirt.virConnect, name: str) -> tuple[int, int]:
    st = conn.lookupByName(name).jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    return int(st.get("time_elapsed", 0)), int(st.get("downtime", 0))


def virsh_migrate(src_uri: str, dst_uri: str, name: str) -> None:
    subprocess.run(
        [
            "virsh", "-q", "-c", src_uri, "migrate", "--live", "--p2p", "--persistent",
            "--undefinesource", "--unsafe", name, dst_uri,
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7, help="migrations per tool")
    ap.add_argument("--memory-mib", type=int, default=128)
    ap.add_argument("--image", default=os.path.join(ROOT, "images", "build", "tiny.qcow2"))
    a = ap.parse_args()
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    image = TinyImage.from_env(a.image)

    lab = Lab(2, "/tmp/vmmgr-lab-bench", "10.213.9.0/24", "vmlabb", lock_timeout_s=600).up()
    conns: list[libvirt.virConnect] = []
    try:
        conns += [libvirt.open(h.uri) for h in lab.hosts]
        base = os.path.join(lab.shared_dir, "tiny-base.qcow2")
        subprocess.run(["cp", "--sparse=always", image.disk, base], check=True)
        info = subprocess.run(
            ["qemu-img", "info", "--output=json", base], capture_output=True, text=True, check=True
        )
        size = int(json.loads(info.stdout)["virtual-size"])
        name = f"bench-{uuid.uuid4().hex[:6]}"
        vol = StorageVolume(
            name=f"{name}.qcow2",
            capacity_bytes=size,
            backing_store=BackingStore(path=base, format="qcow2"),
        )
        disk = conns[0].storagePoolLookupByName("shared").createXML(to_string(vol.build()), 0)
        guest = TinyGuest(
            name, str(uuid.uuid4()), image.kernel, image.initrd, disk.path(), a.memory_mib
        )
        dom = conns[0].defineXML(domain_xml(guest))
        dom.create()
        hb = HeartbeatReader(dom).start()
        hb.wait_for(3, timeout_s=180)  # booted and settled
        hb.stop()

        runs: list[Run] = []
        where = 0
        order = ["virsh", "vmmgr"]
        for i in range(a.runs):
            for tool in order if i % 2 == 0 else list(reversed(order)):
                src, dst = where, 1 - where
                t0 = time.perf_counter()
                if tool == "virsh":
                    virsh_migrate(lab.hosts[src].uri, lab.hosts[dst].uri, name)
                else:
                    migrate_live(
                        conns[src].lookupByName(name),
                        lab.hosts[dst].uri,
                        LiveMigrationOptions(unsafe=True, schedule=()),
                        dest_conn=conns[dst],
                    )
                wall = (time.perf_counter() - t0) * 1000
                elapsed, downtime = completed_stats(conns[dst], name)
                runs.append(Run(tool, f"{src}->{dst}", wall, elapsed, downtime))
                print(
                    f"  {tool:5s} {src}->{dst}  wall {wall:7.0f} ms  elapsed {elapsed:5d} ms  "
                    f"downtime {downtime:4d} ms",
                    flush=True,
                )
                where = dst
        hb = HeartbeatReader(conns[where].lookupByName(name)).start()
        alive = hb.wait_for(1, timeout_s=30)
        hb.stop()
        conns[where].lookupByName(name).destroy()
        conns[where].lookupByName(name).undefine()

        def med(tool: str, field: str) -> float:
            return statistics.median(getattr(r, field) for r in runs if r.tool == tool)

        print(f"\nlive migration, TCG guest {a.memory_mib} MiB, shared disk, {a.runs} runs each")
        print(f"guest heartbeat after the last migration: #{alive}")

        def spread(tool: str, field: str) -> str:
            vals = [getattr(r, field) for r in runs if r.tool == tool]
            return f"{min(vals):.0f}-{max(vals):.0f}"

        print(f"{'median':18s}{'virsh':>10s}{'vmmgr':>10s}{'ratio':>9s}   spread virsh / vmmgr")
        for field, label in (
            ("wall_ms", "wall time (ms)"),
            ("elapsed_ms", "libvirt elapsed"),
            ("downtime_ms", "downtime (ms)"),
        ):
            v, m = med("virsh", field), med("vmmgr", field)
            ratio = m / v if v else float("nan")
            print(
                f"{label:18s}{v:10.0f}{m:10.0f}{ratio:8.2f}x   "
                f"{spread('virsh', field)} / {spread('vmmgr', field)}"
            )
        print("target: vmmgr/virsh <= 1.10x")
        return 0
    finally:
        # close before the namespaces go: a connection whose peer vanished with its network
        # (no FIN ever arrives) would block virConnectClose at exit
        for c in conns:
            c.close()
        lab.down()


if __name__ == "__main__":
    sys.exit(main())
