"""Property: however requests arrive, no device, vGPU slot or MIG instance is held twice."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fixtures.gpu_host import gpu_host_inventory, gpu_host_snap
from vmmgr.devices.claims import (
    ClaimSet,
    DeviceRequest,
    apply_claims,
    choose_devices,
    release_claims,
)
from vmmgr.devices.model import GpuFacts, MigFacts, MigProfileFacts
from vmmgr.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from vmmgr.snapshot import GpuRequest, HostSnap

MIG = MigFacts(
    enabled=True,
    pending=True,
    profiles=(
        MigProfileFacts(0, 19, "1g.10gb", 1, 9984, 7),
        MigProfileFacts(1, 14, "2g.20gb", 2, 20096, 3),
        MigProfileFacts(2, 9, "3g.40gb", 3, 40448, 2),
        MigProfileFacts(3, 5, "4g.40gb", 4, 40448, 1),
        MigProfileFacts(4, 0, "7g.80gb", 7, 81152, 1),
    ),
)
BASE = gpu_host_snap(gpu_host_inventory(gpus=[GpuFacts(index=0, address="0000:3b:00.0", mig=MIG)]))

requests = st.one_of(
    st.builds(
        lambda m, n: DeviceRequest(gpus=(GpuRequest(m, n),)),
        st.sampled_from(["H100-80GB", "A100", "L4", "RTX-A6000", "10de:27b8"]),
        st.integers(1, 3),
    ),
    st.builds(
        lambda m, vf, n: DeviceRequest(fpga_model=m, fpga_allow_vf=vf, fpga_count=n),
        st.sampled_from(["ALVEO-U250", "PAC-N3000", "PAC-N3000-VF"]),
        st.booleans(),
        st.integers(1, 2),
    ),
    st.builds(
        lambda t, n: DeviceRequest(vgpu_type=t, vgpu_count=n),
        st.sampled_from(["nvidia-700", "nvidia-470", "nvidia-471", "GRID A100-8C"]),
        st.integers(1, 8),
    ),
    st.builds(
        lambda p, n: DeviceRequest(mig_profile=p, mig_count=n),
        st.sampled_from(["1g.10gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"]),
        st.integers(1, 3),
    ),
    st.builds(
        lambda a: DeviceRequest(addresses=tuple(a)),
        st.lists(
            st.sampled_from(
                ["0000:3b:00.0", "0000:86:00.0", "0000:87:00.0", "0000:b1:00.1", "0000:d8:00.0"]
            ),
            min_size=1,
            max_size=2,
            unique=True,
        ),
    ),
)


def _check(host: HostSnap, held: list[ClaimSet]) -> None:
    owners: dict[str, str] = {}
    for c in held:
        for d in c.whole_device_ids:
            assert d not in owners, f"{d} held by {owners.get(d)} and {c.vm_id}"
            owners[d] = c.vm_id
    by_id = {d.id: d for d in host.devices}
    vgpu = Counter(v.parent_id for c in held for v in c.vgpus)
    for d in host.devices:
        if d.claimed_by is not None:
            # whole devices: the IOMMU group goes as one, to one VM
            mates = [
                x
                for x in host.devices
                if x.iommu_group == d.iommu_group and x.iommu_group is not None
            ]
            assert {x.claimed_by for x in mates} == {d.claimed_by}
            assert vgpu[d.id] == 0 and not (d.mig and d.mig.claimed)
        for t in d.mdev_types:
            assert t.available >= 0
        if d.mig is not None:
            assert not Counter(d.mig.claimed) - Counter(d.mig.instances)
            assert d.mig.used_slices <= d.mig.total_slices
        if d.pf is not None and d.claimed_by is not None:
            pf = by_id[d.pf]
            assert pf.claimed_by is None or pf.claimed_by == d.claimed_by


@settings(max_examples=150, deadline=None)
@given(st.lists(requests, min_size=1, max_size=12), st.booleans())
def test_claims_never_overlap(reqs: list[DeviceRequest], strict: bool) -> None:
    host = BASE
    held: list[ClaimSet] = []
    for i, req in enumerate(reqs):
        try:
            c = choose_devices(host, req, vm_id=f"vm{i}", whole_group=not strict)
        except (FailedPrecondition, ResourceExhausted, InvalidArgument):
            continue
        assert len(c.passthrough) == sum(g.count for g in req.gpus) + (
            req.fpga_count if req.fpga_model else 0
        ) + len(req.addresses)
        assert len(c.vgpus) == (req.vgpu_count if req.vgpu_type else 0)
        assert len(c.migs) == (req.mig_count if req.mig_profile else 0)
        host = apply_claims(host, c)
        held.append(c)
        _check(host, held)
    # Releasing everything gives back every whole device and vGPU slot.
    for c in reversed(held):
        host = release_claims(host, c)
    assert all(d.claimed_by is None and d.mdev_claims == 0 for d in host.devices)
    assert [t.available for d in host.devices for t in d.mdev_types] == [
        t.available for d in BASE.devices for t in d.mdev_types
    ]
