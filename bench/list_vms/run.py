"""ListVMs and snapshot building at 10,000 VMs, against a raw-SQL bound measured in the same run.

For each backend (SQLite always; Postgres when VMMGR_TEST_PG_URL or --pg-url is set) the store
is filled with N VMs (default 10,000) on 100 hosts, each with labels and a realistic create
spec (JSON), then:

  list/100, list/1000   repo.list_vms walking every page (keyset), one read session per call
                        as a request would; bound: the same keyset page as raw SQL
                        ``SELECT * FROM vm WHERE (name,id) > (..) ORDER BY name, id LIMIT n``
                        through the same engine (no ORM objects, JSON left as the driver gives)
  list/100/nospec       list/100 with include_spec=False (the create spec JSON not decoded)
  list/label/100        filter by one label (10% of VMs), bound: raw SQL with the same join
  snapshot              build_snapshot (hosts, VMs, claims, groups) vs a raw
                        ``SELECT id,name,host,vcpus,memory_mib,disk_gib,state,ha,ha_priority``
  snapshot/placement    build_snapshot(placement_only=True), what every create reads, vs a
                        raw ``SELECT * FROM host``: it must not grow with the VM count (the
                        per-host usage comes from host_usage, kept by triggers)

It prints p50 / p99 wall latency (ms) and the ratio to the bound's p50/p99, plus the p50 of
this thread's CPU time (steadier on a shared machine). No assertions: figures.

    .venv/bin/python bench/list_vms/run.py [--vms 10000] [--rounds 3] [--pg-url URL]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import make_url

from vmmgr.state import Store, build_snapshot, open_store, repo
from vmmgr.state.models import VM, Host, VMLabel, new_id

HOSTS = 100
USER_DATA = "#cloud-config\nusers:\n  - name: ops\n    ssh_authorized_keys: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG0 ops@x]\npackages: [htop, tmux]\n"  # noqa: E501


def _spec(i: int) -> dict[str, object]:
    return {
        "disks": [{"image": "debian-12", "size_gib": 20, "bus": "virtio"}],
        "networks": [
            {
                "network": "default",
                "mac": f"52:54:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
            }
        ],
        "cloud_init": {"user_data": USER_DATA, "network_config": ""},
        "accelerators": {"gpus": [], "vgpu_type": "", "mig_profile": ""},
        "groups": [],
    }


def populate(store: Store, n: int) -> None:
    with store.session() as s:
        for h in range(HOSTS):
            s.add(
                Host(
                    name=f"host-{h:03d}",
                    uri=f"qemu+tcp://10.0.{h}.1/system",
                    state="up",
                    cpus=128,
                    memory_mib=1 << 20,
                )
            )
        s.flush()
        vms, labels = [], []
        for i in range(n):
            vm_id = new_id()
            lab = {"app": f"app{i % 10}", "env": "prod" if i % 3 else "dev", "team": "ml"}
            vms.append(
                dict(
                    id=vm_id,
                    name=f"vm-{i:05d}",
                    project=f"proj{i % 4}",
                    owner="alice",
                    description="",
                    host=f"host-{i % HOSTS:03d}",
                    vcpus=2 + i % 8,
                    memory_mib=2048,
                    disk_gib=20,
                    image="debian-12",
                    spec=_spec(i),
                    desired_power="running",
                    state="running",
                    state_reason="",
                    labels=lab,
                    ha=i % 5 == 0,
                    ha_priority=i % 3,
                    domain_uuid=vm_id,
                    created_at=None,
                    updated_at=None,
                    generation=1,
                )
            )
            labels += [dict(vm_id=vm_id, key=k, value=v) for k, v in lab.items()]
        now = VM(name="x", vcpus=1, memory_mib=1).created_at
        for v in vms:
            v["created_at"] = v["updated_at"] = now
        s.execute(insert(VM), vms)
        s.execute(insert(VMLabel), labels)
    with store.engine.begin() as c:
        if store.backend == "postgresql":
            c.execute(text("ANALYZE"))
        else:
            c.exec_driver_sql("ANALYZE")


@dataclass
class Samples:
    """Wall-clock and this thread's CPU time per call, in ms. CPU time is the steadier figure
    on a busy machine (it leaves out time spent preempted, and the Postgres server's share)."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def __iadd__(self, other: Samples) -> Samples:
        self.wall += other.wall
        self.cpu += other.cpu
        return self

    @contextmanager
    def measure(self) -> Iterator[None]:
        w, c = time.perf_counter_ns(), time.thread_time_ns()
        yield
        self.cpu.append((time.thread_time_ns() - c) / 1e6)
        self.wall.append((time.perf_counter_ns() - w) / 1e6)


def timed(fn: Callable[[], object], n: int) -> Samples:
    out = Samples()
    for _ in range(n):
        with out.measure():
            fn()
    return out


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def walk_repo(
    store: Store, size: int, labels: dict[str, str] | None, include_spec: bool = True
) -> Samples:
    """One full walk over the pages; one read session per call, as one RPC would use."""
    out = Samples()
    token = ""
    while True:
        with out.measure(), store.read_session() as s:
            page = repo.list_vms(
                s, page_size=size, page_token=token, labels=labels, include_spec=include_spec
            )
        assert page.items
        token = page.next_page_token
        if not token:
            return out


def walk_raw(store: Store, size: int, label: tuple[str, str] | None) -> Samples:
    """The bound: the same keyset pages as one raw statement through the same engine."""
    out = Samples()
    join = ""
    # size + 1 rows, like the repo (it reads one extra row to know whether a next page exists)
    params: dict[str, object] = {"n": size + 1, "name": "", "id": ""}
    if label:
        join = "JOIN vm_label l ON l.vm_id = vm.id AND l.key = :k AND l.value = :v"
        params.update(k=label[0], v=label[1])
    sql = text(
        f"SELECT vm.* FROM vm {join} WHERE (vm.name, vm.id) > (:name, :id)"
        " ORDER BY vm.name, vm.id LIMIT :n"
    )
    while True:
        with out.measure(), store.engine.connect() as c:
            rows = c.execute(sql, params).fetchall()
        if len(rows) <= size:
            return out
        params.update(name=rows[size - 1].name, id=rows[size - 1].id)


def snapshot_repo(store: Store) -> None:
    with store.read_session() as s:
        snap = build_snapshot(s)
        assert len(snap.hosts) == HOSTS


def placement_snapshot(store: Store) -> None:
    """What every create reads (under its write lock): hosts with their usage, groups."""
    with store.read_session() as s:
        snap = build_snapshot(s, placement_only=True)
        assert len(snap.hosts) == HOSTS


def hosts_raw(store: Store) -> None:
    """The least a placement can read: the host rows."""
    with store.engine.connect() as c:
        c.execute(text("SELECT * FROM host")).fetchall()


def snapshot_raw(store: Store) -> None:
    with store.engine.connect() as c:
        c.execute(text("SELECT * FROM host")).fetchall()
        c.execute(
            text(
                "SELECT id, name, host, vcpus, memory_mib, disk_gib, state, ha, ha_priority FROM vm"
            )
        ).fetchall()


@contextmanager
def backend_store(kind: str, pg_url: str) -> Iterator[Store]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as d:
            store = open_store(None, Path(d))
            try:
                yield store
            finally:
                store.close()
        return
    admin = create_engine(pg_url)
    schema = f"vmmgr_bench_{uuid.uuid4().hex[:8]}"
    with admin.begin() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(pg_url).update_query_dict({"options": f"-csearch_path={schema}"})
    store = open_store(url.render_as_string(hide_password=False), Path("/nonexistent"))
    try:
        yield store
    finally:
        store.close()
        with admin.begin() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


HEADER = (
    f"{'backend':<9} {'case':<16} {'n':>4} {'p50':>8} {'p99':>8} {'bnd50':>8} {'bnd99':>8} "
    f"{'r50':>6} {'r99':>6} | {'cpu50':>7} {'bcpu50':>7} {'rcpu':>6}"
)


def row(backend: str, case: str, xs: Samples, bound: Samples) -> str:
    p50, p99, b50, b99 = (
        pct(xs.wall, 50),
        pct(xs.wall, 99),
        pct(bound.wall, 50),
        pct(bound.wall, 99),
    )
    c50, bc50 = pct(xs.cpu, 50), pct(bound.cpu, 50)
    return (
        f"{backend:<9} {case:<16} {len(xs.wall):>4} {p50:>8.2f} {p99:>8.2f} {b50:>8.2f} "
        f"{b99:>8.2f} {p50 / b50:>5.1f}x {p99 / b99:>5.1f}x | {c50:>7.2f} {bc50:>7.2f} "
        f"{c50 / max(bc50, 1e-3):>5.1f}x"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vms", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3, help="full page walks per case")
    ap.add_argument("--snapshots", type=int, default=10)
    ap.add_argument("--pg-url", default=os.environ.get("VMMGR_TEST_PG_URL", ""))
    args = ap.parse_args()
    backends = ["sqlite"] + (["postgres"] if args.pg_url else [])
    print(
        f"# {args.vms} VMs on {HOSTS} hosts; {args.rounds} page walks per case; "
        f"python {sys.version.split()[0]}; {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}; "
        "times in ms (wall p50/p99, bound = raw SQL, r = ratio; cpu = this thread's CPU time)"
    )
    print(HEADER)
    for kind in backends:
        with backend_store(kind, args.pg_url) as store:
            t = time.perf_counter()
            populate(store, args.vms)
            print(f"# {kind}: populated in {time.perf_counter() - t:.1f}s", flush=True)
            for size in (100, 1000):
                walk_repo(store, size, None)  # warm
                walk_raw(store, size, None)
                xs, bound = Samples(), Samples()
                for _ in range(args.rounds):
                    xs += walk_repo(store, size, None)
                    bound += walk_raw(store, size, None)
                print(row(kind, f"list/{size}", xs, bound), flush=True)
            xs, bound = Samples(), Samples()
            for _ in range(args.rounds):
                xs += walk_repo(store, 100, None, include_spec=False)
                bound += walk_raw(store, 100, None)
            print(row(kind, "list/100/nospec", xs, bound), flush=True)
            xs, bound = Samples(), Samples()
            for _ in range(args.rounds):
                xs += walk_repo(store, 100, {"app": "app3"})
                bound += walk_raw(store, 100, ("app", "app3"))
            print(row(kind, "list/label/100", xs, bound), flush=True)
            snapshot_repo(store)
            xs = timed(lambda: snapshot_repo(store), args.snapshots)
            bound = timed(lambda: snapshot_raw(store), args.snapshots)
            print(row(kind, "snapshot", xs, bound), flush=True)
            placement_snapshot(store)
            xs = timed(lambda: placement_snapshot(store), args.snapshots * 10)
            bound = timed(lambda: hosts_raw(store), args.snapshots * 10)
            print(row(kind, "snapshot/placement", xs, bound), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
