"""Balance benchmark: vmmgr's balancer vs Ganeti hbal on the same synthetic clusters.

Both get the same CPU/memory-only problem (hbal through its text backend, instances with the
externally mirrored "ext" template so every move is a live migration to any node; the same
vCPU/pCPU ratio limit 4.0 and no memory overcommit). Both resulting placements are scored by the
ONE vmmgr scorer (policies.score.cluster_score). Prints final score, moves and wall time, and
vmmgr/hbal ratios (target: all <= 1).

    .venv/bin/python -m bench.balance.run     # 100x1000 (hbal cap 1 h), 1000x10000 (cap 10 min)
    .venv/bin/python -m bench.balance.run --sizes 20x200 --hbal-timeout 120

hbal scores every instance x node move at every step and keeps shared-storage clusters N+1
redundant (Ganeti design doc "N+1 redundancy for shared storage"); it is slow at these sizes. A
capped hbal contributes the moves it had printed by the cap (it prints each step as found).
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.balance.hbal_text import parse_steps, write
from policies.balance import BalanceConfig, plan_balance
from policies.fits import apply_moves, check_moves
from policies.model import ClusterModel, Limits
from policies.plan import Move
from policies.score import Weights, cluster_score, model_score
from vmmgr.snapshot import ClusterSnapshot, HostSnap, HostState, VMSnap

CPU_RATIO = 4.0
WEIGHTS = Weights(cpu=1.0, memory=1.0, gpu=0.0, slots=0.0)
NODE_TYPES = ((32, 128 * 1024), (64, 256 * 1024), (96, 384 * 1024))


def synth(n_hosts: int, n_vms: int, seed: int) -> ClusterSnapshot:
    """Heterogeneous hosts, VMs 1-16 vCPUs x 2-8 GiB/vCPU, placed with a skew (hot hosts)."""
    rnd = random.Random(seed)
    specs = [rnd.choice(NODE_TYPES) for _ in range(n_hosts)]
    total_mem = sum(m for _, m in specs)
    sizes = [rnd.choices((1, 2, 4, 8, 16), (4, 5, 5, 3, 1))[0] for _ in range(n_vms)]
    per_vcpu = [rnd.choice((2048, 4096, 8192)) for _ in range(n_vms)]
    raw = sum(v * p for v, p in zip(sizes, per_vcpu, strict=True))
    scale = 0.60 * total_mem / raw  # about 60 % of the cluster's memory in use
    mems = [max(512, int(v * p * scale) // 256 * 256) for v, p in zip(sizes, per_vcpu, strict=True)]
    weight = [rnd.paretovariate(1.2) for _ in range(n_hosts)]
    used_c = [0] * n_hosts
    used_m = [0] * n_hosts
    placed: list[int] = []
    for vcpus, mem in zip(sizes, mems, strict=True):
        for _ in range(50):
            h = rnd.choices(range(n_hosts), weight)[0]
            if used_c[h] + vcpus <= specs[h][0] * CPU_RATIO and used_m[h] + mem <= specs[h][1]:
                break
        else:
            fits = [
                i
                for i in range(n_hosts)
                if used_c[i] + vcpus <= specs[i][0] * CPU_RATIO and used_m[i] + mem <= specs[i][1]
            ]
            h = min(fits, key=lambda i: used_m[i] / specs[i][1])
        used_c[h] += vcpus
        used_m[h] += mem
        placed.append(h)
    names = [f"node-{i:05d}" for i in range(n_hosts)]
    vms = tuple(
        VMSnap(
            id=f"vm-{j:06d}",
            name=f"vm-{j:06d}",
            host=names[placed[j]],
            vcpus=sizes[j],
            memory_mib=mems[j],
        )
        for j in range(n_vms)
    )
    hosts = tuple(
        HostSnap(
            name=names[i],
            state=HostState.UP,
            cpus=specs[i][0],
            memory_mib=specs[i][1],
            used_vcpus=used_c[i],
            used_memory_mib=used_m[i],
            vms=tuple(v.id for v in vms if v.host == names[i]),
        )
        for i in range(n_hosts)
    )
    return ClusterSnapshot(hosts=hosts, vms=vms)


@dataclass
class Result:
    score: float
    moves: int
    distinct: int
    wall_s: float
    cpu_s: float
    prefix: list[float] = field(default_factory=list)  # score after each move (index 0: none)
    note: str = ""

    def moves_to_reach(self, score: float) -> int | None:
        return next((k for k, s in enumerate(self.prefix) if s <= score + 1e-12), None)

    def score_after(self, moves: int) -> float:
        return self.prefix[min(moves, len(self.prefix) - 1)]


def prefix_scores(snap: ClusterSnapshot, moves: list[Move]) -> list[float]:
    model = ClusterModel(snap, Limits(cpu_ratio=CPU_RATIO))
    out = [model_score(model, WEIGHTS)]
    for m in moves:
        model.move(m.vm_id, m.dst)
        out.append(model_score(model, WEIGHTS))
    return out


def run_vmmgr(snap: ClusterSnapshot) -> Result:
    """The default BalanceConfig, told to act now and without a move cap (a one-shot compare)."""
    cfg = BalanceConfig(
        weights=WEIGHTS,
        limits=Limits(cpu_ratio=CPU_RATIO),
        start_threshold=0.0,
        stop_threshold=0.0,
        hold_rounds=1,
        max_moves=10**6,
    )
    t0, c0 = time.perf_counter(), time.process_time()
    plan = plan_balance(snap, now=0.0, config=cfg)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    bad = check_moves(snap, plan.moves, cfg.limits)
    after = apply_moves(snap, plan.moves, cfg.limits)
    score = cluster_score(after, WEIGHTS)
    assert abs(score - plan.score_after) < 1e-9, (score, plan.score_after)
    note = f"{len(plan.stages)} parallel stages" + (
        f", {len(bad)} FILTER VIOLATIONS" if bad else ""
    )
    distinct = len({m.vm_id for m in plan.moves})
    prefix = prefix_scores(snap, list(plan.moves))
    return Result(score, len(plan.moves), distinct, wall, cpu, prefix, note)


def run_hbal(snap: ClusterSnapshot, timeout: float) -> Result:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "cluster.txt"
        write(snap, data, CPU_RATIO)
        cmd = ["hbal", "-t", str(data), "--ignore-dynu", "-C"]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
            note = "" if proc.returncode == 0 else f"exit {proc.returncode}"
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            note = f"CAPPED at {timeout:.0f}s: the moves it had printed"
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    steps = parse_steps(out)
    moves = []
    where = {vm.id: vm.host for vm in snap.vms}
    for inst, _src, dst, _score in steps:
        src = where[inst]
        assert src is not None
        moves.append(Move(inst, src, dst))
        where[inst] = dst
    bad = check_moves(snap, moves, Limits(cpu_ratio=CPU_RATIO))
    if bad:
        note += f" {len(bad)} moves break vmmgr's filters"
    prefix = prefix_scores(snap, moves)
    distinct = len({m.vm_id for m in moves})
    return Result(prefix[-1], len(moves), distinct, wall, cpu, prefix, note.strip())


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}" if b > 0 else ("1.000" if a == 0 else "inf")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100x1000,1000x10000")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument(
        "--hbal-timeout",
        default="3600,600",
        help="seconds hbal may run, one per size (the last repeats)",
    )
    args = ap.parse_args()
    if shutil.which("hbal") is None:
        raise SystemExit("hbal not found: apt-get install -y ganeti-htools")
    print(
        f"cpus visible: {os.cpu_count()}; load average {os.getloadavg()[0]:.1f}; "
        f"scorer weights cpu=1 memory=1; vCPU ratio {CPU_RATIO}"
    )
    rows = []
    caps = [float(x) for x in args.hbal_timeout.split(",")]
    for n, spec in enumerate(args.sizes.split(",")):
        n_hosts, n_vms = (int(x) for x in spec.split("x"))
        snap = synth(n_hosts, n_vms, args.seed)
        initial = cluster_score(snap, WEIGHTS)
        ours = run_vmmgr(snap)
        theirs = run_hbal(snap, caps[min(n, len(caps) - 1)])
        rows.append((n_hosts, n_vms, ours, theirs))
        print(f"\n== {n_hosts} hosts, {n_vms} VMs: initial score {initial:.5f}")
        for name, r in (("vmmgr", ours), ("hbal", theirs)):
            print(
                f"  {name:5s} score {r.score:.5f}  moves {r.moves:5d} (VMs {r.distinct:5d})  "
                f"wall {r.wall_s:8.2f}s  cpu {r.cpu_s:8.2f}s  {r.note}"
            )
        reach = ours.moves_to_reach(theirs.score)
        same = ours.score_after(theirs.moves)
        print(
            f"  vmmgr with hbal's move budget ({theirs.moves}): score {same:.5f} "
            f"(ratio {_ratio(same, theirs.score)})"
        )
        print(
            f"  vmmgr moves to reach hbal's score {theirs.score:.5f}: "
            + (f"{reach} (ratio {_ratio(reach, theirs.moves)})" if reach is not None else "never")
        )
    print(
        "\n| hosts | VMs | score vmmgr | score hbal | ratio | moves vmmgr | moves hbal | ratio "
        "| wall vmmgr s | wall hbal s | ratio | cpu vmmgr s | cpu hbal s | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n_hosts, n_vms, o, t in rows:
        capped = " (capped)" if "CAPPED" in t.note else ""
        print(
            f"| {n_hosts} | {n_vms} | {o.score:.5f} | {t.score:.5f}{capped} "
            f"| {_ratio(o.score, t.score)} | {o.moves} | {t.moves}{capped} "
            f"| {_ratio(o.moves, t.moves)} | {o.wall_s:.2f} | {t.wall_s:.2f}{capped} "
            f"| {_ratio(o.wall_s, t.wall_s)} | {o.cpu_s:.2f} | {t.cpu_s:.2f}{capped} "
            f"| {_ratio(o.cpu_s, t.cpu_s)} |"
        )


if __name__ == "__main__":
    main()
