"""MIG profiles as resources and the geometry planner (unit + property tests).

Profiles are the ones recorded on the H100 (reference/nvml-h100-passthrough.txt).
"""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmmgr.devices.mig import (
    MigDemand,
    MigGpu,
    PlacedInstance,
    all_geometries,
    ensure_mig_reconfigurable,
    mig_gpu_from_snap,
    plan_geometry,
    profile_specs,
    resolve_profile,
    stranded_slices,
    validate_geometry,
)
from vmmgr.devices.model import MigPlacement
from vmmgr.errors import FailedPrecondition, InvalidArgument
from vmmgr.snapshot import DeviceKind, DeviceSnap, MigProfileSnap, MigSnap

H100 = (
    MigProfileSnap("1g.10gb", 1, 9984, 7),
    MigProfileSnap("2g.20gb", 2, 20096, 3),
    MigProfileSnap("3g.40gb", 3, 40448, 2),
    MigProfileSnap("4g.40gb", 4, 40448, 1),
    MigProfileSnap("7g.80gb", 7, 81152, 1),
    MigProfileSnap("1g.10gb+me", 1, 9984, 1),
    MigProfileSnap("1g.20gb", 1, 20096, 4),
)
SPECS = profile_specs(H100)
BY = {s.name: s for s in SPECS}
NAMES = [p.name for p in H100]


def gpu(name: str = "g0", instances: tuple[PlacedInstance, ...] = (), idle: bool = True) -> MigGpu:
    return MigGpu(name, SPECS, instances, idle=idle)


def test_specs_follow_nvidias_placement_table() -> None:
    assert (BY["1g.10gb"].memory_slots, BY["1g.10gb"].starts) == (1, (0, 1, 2, 3, 4, 5, 6))
    assert (BY["1g.20gb"].memory_slots, BY["1g.20gb"].starts) == (2, (0, 2, 4, 6))
    assert (BY["2g.20gb"].memory_slots, BY["2g.20gb"].starts) == (2, (0, 2, 4))
    assert (BY["3g.40gb"].memory_slots, BY["3g.40gb"].starts) == (4, (0, 4))
    assert (BY["4g.40gb"].memory_slots, BY["4g.40gb"].starts) == (4, (0,))
    assert (BY["7g.80gb"].memory_slots, BY["7g.80gb"].starts) == (8, (0,))


@pytest.mark.parametrize(
    "geometry",
    [
        [("7g.80gb", 0)],
        [("4g.40gb", 0), ("3g.40gb", 4)],
        [("3g.40gb", 0), ("3g.40gb", 4)],
        [("2g.20gb", 0), ("2g.20gb", 2), ("3g.40gb", 4)],
        [("1g.10gb", i) for i in range(7)],
        [("1g.20gb", 0), ("1g.20gb", 2), ("1g.20gb", 4), ("1g.20gb", 6)],
        [("4g.40gb", 0), ("2g.20gb", 4), ("1g.10gb", 6)],
    ],
)
def test_documented_geometries_are_valid(geometry: list[tuple[str, int]]) -> None:
    validate_geometry(SPECS, geometry)


@pytest.mark.parametrize(
    ("geometry", "why"),
    [
        ([("1g.10gb", 7)], "cannot start"),
        ([("2g.20gb", 6)], "cannot start"),
        ([("4g.40gb", 4)], "cannot start"),
        ([("3g.40gb", 0), ("2g.20gb", 2)], "overlaps"),
        ([("1g.10gb+me", 0), ("1g.10gb+me", 1)], "more than 1"),
        ([("4g.40gb", 0), ("2g.20gb", 4), ("1g.20gb", 6)], None),  # 7 compute: valid
        ([("bogus", 0)], "unknown"),
    ],
)
def test_invalid_geometries(geometry: list[tuple[str, int]], why: str | None) -> None:
    if why is None:
        validate_geometry(SPECS, geometry)
        return
    with pytest.raises(InvalidArgument, match=why):
        validate_geometry(SPECS, geometry)


def test_compute_limit() -> None:
    with pytest.raises(InvalidArgument, match="compute"):
        validate_geometry(SPECS, [("4g.40gb", 0), ("2g.20gb", 4), ("1g.10gb", 6)], compute=6)


def test_stranded_slices() -> None:
    assert stranded_slices(SPECS, []) == 0
    assert stranded_slices(SPECS, [("3g.40gb", 0), ("3g.40gb", 4)]) == 1  # memory full, 1 left
    assert stranded_slices(SPECS, [("3g.40gb", 0), ("2g.20gb", 4), ("1g.10gb", 6)]) == 1
    assert stranded_slices(SPECS, [("4g.40gb", 0), ("3g.40gb", 4)]) == 0
    assert stranded_slices(SPECS, [("1g.10gb", i) for i in range(6)]) == 0  # slot 6 left


def test_resolve_profile_by_name_or_size() -> None:
    assert resolve_profile(MigDemand("a", "3G.40GB"), SPECS) == "3g.40gb"
    assert resolve_profile(MigDemand("a", "nope"), SPECS) is None
    assert resolve_profile(MigDemand("a", min_memory_mib=15000), SPECS) == "1g.20gb"
    assert resolve_profile(MigDemand("a", min_slices=2), SPECS) == "2g.20gb"
    assert resolve_profile(MigDemand("a", min_slices=4, min_memory_mib=50000), SPECS) == "7g.80gb"
    assert resolve_profile(MigDemand("a", min_memory_mib=10**6), SPECS) is None


def test_plan_packs_and_prefers_fewest_stranded() -> None:
    demands = [MigDemand("a", "3g.40gb"), MigDemand("b", "4g.40gb")]
    plan = plan_geometry([gpu("g0"), gpu("g1")], demands)
    assert plan.unplaced == ()
    assert {a.device_id for a in plan.assignments} == {"g0"}  # consolidated on one GPU
    g0 = plan.gpus[0]
    assert set(g0.geometry) == {MigPlacement("4g.40gb", 0), MigPlacement("3g.40gb", 4)}
    assert g0.stranded_slices == 0 and plan.stranded_slices == 0
    assert plan.gpus[1].changed is False


def test_plan_reuses_existing_instances_and_keeps_claimed() -> None:
    g = gpu(
        "g0",
        (
            PlacedInstance(0, "3g.40gb", claimed_by="vm-1"),
            PlacedInstance(4, "2g.20gb"),
        ),
    )
    plan = plan_geometry([g], [MigDemand("a", "2g.20gb"), MigDemand("b", "1g.10gb")])
    got = {a.demand_id: a for a in plan.assignments}
    assert got["a"].existing and got["a"].start == 4
    assert not got["b"].existing and got["b"].start == 6
    assert plan.gpus[0].destroy == () and plan.gpus[0].create == (MigPlacement("1g.10gb", 6),)


def test_plan_reshapes_an_idle_gpu_but_not_a_busy_one() -> None:
    sevens = tuple(PlacedInstance(i, "1g.10gb") for i in range(7))
    idle = plan_geometry([gpu("g0", sevens)], [MigDemand("a", "7g.80gb")])
    assert idle.assignments[0].profile == "7g.80gb"
    assert len(idle.gpus[0].destroy) == 7 and idle.gpus[0].create == (MigPlacement("7g.80gb", 0),)
    busy = plan_geometry([gpu("g0", sevens, idle=False)], [MigDemand("a", "7g.80gb")])
    assert busy.assignments == () and busy.unplaced[0].demand_id == "a"
    assert busy.gpus[0].changed is False
    held = tuple(PlacedInstance(i, "1g.10gb", claimed_by="vm") for i in range(1))
    keep = plan_geometry([gpu("g0", held)], [MigDemand("a", "7g.80gb")])
    assert keep.unplaced and all(p.profile != "7g.80gb" for p in keep.gpus[0].geometry)


def test_unservable_demands_say_why() -> None:
    plan = plan_geometry(
        [gpu("g0")], [MigDemand("x", "9g.90gb"), MigDemand("y", min_memory_mib=10**6)]
    )
    assert [u.demand_id for u in plan.unplaced] == ["x", "y"]
    assert "no MIG-enabled GPU offers" in plan.unplaced[0].reason
    off = MigGpu("g0", SPECS, enabled=False)
    assert plan_geometry([off], [MigDemand("a", "1g.10gb")]).unplaced[0].demand_id == "a"


def test_mig_gpu_from_snap_lays_out_instances_and_claims() -> None:
    snap = DeviceSnap(
        id="h/0000:3b:00.0",
        host="h",
        address="0000:3b:00.0",
        kind=DeviceKind.GPU,
        vendor_id=0x10DE,
        product_id=0x2330,
        model="H100-80GB",
        mig=MigSnap(True, 7, H100, instances=("1g.10gb", "3g.40gb"), claimed=("3g.40gb",)),
    )
    g = mig_gpu_from_snap(snap)
    assert g is not None
    assert [(i.profile, i.start, i.claimed_by is not None) for i in g.instances] == [
        ("3g.40gb", 0, True),
        ("1g.10gb", 4, False),
    ]
    ensure_mig_reconfigurable(snap, [MigPlacement("1g.10gb", 4)])
    with pytest.raises(FailedPrecondition, match="claimed MIG"):
        ensure_mig_reconfigurable(snap, [MigPlacement("3g.40gb", 0)])
    with pytest.raises(FailedPrecondition, match="not enabled"):
        ensure_mig_reconfigurable(DeviceSnap(**{**_fields(snap), "mig": None}))
    with pytest.raises(FailedPrecondition, match="vm-9"):
        ensure_mig_reconfigurable(DeviceSnap(**{**_fields(snap), "claimed_by": "vm-9"}))


def _fields(d: DeviceSnap) -> dict[str, object]:
    return {k: getattr(d, k) for k in DeviceSnap.__slots__}  # type: ignore[attr-defined]


# ------------------------------------------------------------------ properties


def _brute_force_max_compute(demands: list[str]) -> int:
    """Independent of the planner: the most compute of any demand subset that has a valid
    placement, found by trying every start of every instance."""
    best = 0
    for r in range(len(demands), 0, -1):
        for subset in set(itertools.combinations(sorted(demands), r)):
            compute = sum(BY[n].compute for n in subset)
            if compute <= best or compute > 7:
                continue
            for starts in itertools.product(*(BY[n].starts for n in subset)):
                try:
                    validate_geometry(SPECS, list(zip(subset, starts, strict=True)))
                except InvalidArgument:
                    continue
                best = compute
                break
    return best


demand_lists = st.lists(st.sampled_from(NAMES), min_size=0, max_size=6)


@settings(max_examples=60, deadline=None)
@given(demand_lists)
def test_single_gpu_plan_is_optimal(names: list[str]) -> None:
    plan = plan_geometry([gpu("g0")], [MigDemand(f"d{i}", n) for i, n in enumerate(names)])
    served = sum(BY[a.profile].compute for a in plan.assignments)
    assert served == _brute_force_max_compute(names)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(demand_lists, min_size=1, max_size=3),
    st.lists(st.sampled_from(NAMES), max_size=4),
    st.booleans(),
)
def test_plans_are_valid_and_honest(batches: list[list[str]], held: list[str], idle: bool) -> None:
    # a GPU that already carries (some claimed) instances, plus empty ones
    base = next((g for g in all_geometries(SPECS) if Counter(n for n, _ in g) == Counter(held)), ())
    first = tuple(
        PlacedInstance(s, n, claimed_by="vm" if i % 2 == 0 else None)
        for i, (n, s) in enumerate(base)
    )
    gpus = [gpu("g0", first, idle=idle), gpu("g1"), gpu("g2")]
    demands = [MigDemand(f"d{i}", n) for i, n in enumerate(itertools.chain(*batches))]
    plan = plan_geometry(gpus, demands)
    ids = [a.demand_id for a in plan.assignments] + [u.demand_id for u in plan.unplaced]
    assert sorted(ids) == sorted(d.id for d in demands)  # each demand answered exactly once
    wanted = {d.id: d.profile for d in demands}
    per_gpu = {p.device_id: p for p in plan.gpus}
    for a in plan.assignments:
        assert a.profile == wanted[a.demand_id]
        assert MigPlacement(a.profile, a.start) in per_gpu[a.device_id].geometry
    for p in plan.gpus:
        validate_geometry(SPECS, [(x.profile, x.start) for x in p.geometry])  # type: ignore[misc]
        assert p.stranded_slices >= 0
    # claimed instances never move; a busy GPU loses nothing
    g0 = Counter((x.profile, x.start) for x in per_gpu["g0"].geometry)
    must_keep = [i for i in first if i.claimed_by or not idle]
    assert not Counter((i.profile, i.start) for i in must_keep) - g0
    # an instance serves at most one demand
    used = Counter((a.device_id, a.profile, a.start) for a in plan.assignments)
    assert all(v == 1 for v in used.values())
    # nothing is created that no demand asked for
    created = sum(len(p.create) for p in plan.gpus)
    assert created <= sum(1 for a in plan.assignments if not a.existing)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 21))
def test_small_slices_fill_every_gpu(n: int) -> None:
    plan = plan_geometry(
        [gpu(f"g{i}") for i in range(3)], [MigDemand(f"d{i}", "1g.10gb") for i in range(n)]
    )
    assert len(plan.assignments) == n and plan.unplaced == ()
