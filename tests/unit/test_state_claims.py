"""Store suite: device inventory and claims (whole / vGPU / MIG), incl. racing claimers."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError
from state_fixtures import *  # noqa: F403  (the store fixtures)

from vmmgr.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from vmmgr.state import Store, repo
from vmmgr.state.models import VM, Device, DeviceClaim, Host
from vmmgr.state.repo import ClaimRequest

A100_MDEV = [
    {"name": "nvidia-471", "display_name": "GRID A100-4C", "available": 10, "max_instances": 2},
    {"name": "nvidia-472", "display_name": "GRID A100-8C", "available": 5, "max_instances": 5},
]
H100_MIG = {
    "enabled": True,
    "total_slices": 7,
    "profiles": [
        {"name": "1g.10gb", "slices": 1, "memory_mib": 9856, "max_instances": 7},
        {"name": "3g.40gb", "slices": 3, "memory_mib": 40192, "max_instances": 2},
        {"name": "7g.80gb", "slices": 7, "memory_mib": 80000, "max_instances": 1},
    ],
    "instances": [],
}


def _gpu(address: str, **kw: Any) -> Device:
    fields: dict[str, Any] = dict(
        host="h1",
        address=address,
        kind="gpu",
        vendor_id=0x10DE,
        product_id=0x2330,
        model="H100-80GB",
        numa_node=0,
        iommu_group=12,
        driver="nvidia",
        health="healthy",
    )
    fields.update(kw)
    return Device(**fields)


@pytest.fixture
def gpus(store: Store, host: Host) -> list[str]:
    with store.session() as s:
        sync = repo.upsert_devices(
            s,
            "h1",
            [
                _gpu("0000:3b:00.0"),
                _gpu("0000:5e:00.0", mdev_types=A100_MDEV, model="A100"),
                _gpu("0000:86:00.0", mig=H100_MIG),
            ],
        )
    return sync.added


@pytest.fixture
def vms(store: Store, host: Host) -> list[str]:
    with store.session() as s:
        return [
            repo.add_vm(s, VM(name=f"v{i}", vcpus=1, memory_mib=1, host="h1")).id for i in range(4)
        ]


# ---------------------------------------------------------------------------- inventory


def test_upsert_devices_adds_updates_and_marks_gone(store: Store, host: Host) -> None:
    with store.session() as s:
        first = repo.upsert_devices(s, "h1", [_gpu("0000:3b:00.0"), _gpu("0000:5e:00.0")])
        repo.set_device_health(s, "h1/0000:3b:00.0", "tainted", ["ecc: 3 uncorrectable"])
        repo.update_device_telemetry(s, "h1/0000:3b:00.0", nvml={"temp_c": 41, "ecc": None})
    assert first.added == ["h1/0000:3b:00.0", "h1/0000:5e:00.0"]
    with store.session() as s:
        second = repo.upsert_devices(
            s, "h1", [_gpu("0000:3b:00.0", driver="vfio-pci", health="healthy")]
        )
    assert second.updated == ["h1/0000:3b:00.0"] and second.gone == ["h1/0000:5e:00.0"]
    with store.read_session() as s:
        d = repo.get_device(s, "h1/0000:3b:00.0")
        assert d.driver == "vfio-pci"  # inventory field follows the scan
        assert d.health == "tainted"  # health survives a rescan
        assert d.health_reasons == ["ecc: 3 uncorrectable"]
        assert d.nvml == {"temp_c": 41, "ecc": None}  # null = unknown, kept as such
        assert [x.id for x in repo.list_devices(s, host="h1")] == ["h1/0000:3b:00.0"]
        assert len(repo.list_devices(s, present_only=False)) == 2
        assert repo.list_devices(s, kind="fpga") == []
    with store.session() as s:  # it came back
        again = repo.upsert_devices(s, "h1", [_gpu("0000:3b:00.0"), _gpu("0000:5e:00.0")])
    assert again.added == [] and len(again.updated) == 2
    with store.read_session() as s:
        assert len(repo.list_devices(s, host="h1")) == 2


def test_upsert_devices_rejects_bad_input(store: Store, host: Host) -> None:
    with store.session() as s:
        with pytest.raises(NotFound) as e:
            repo.upsert_devices(s, "nohost", [])
        assert e.value.field == "host"
        with pytest.raises(InvalidArgument) as e2:
            repo.upsert_devices(s, "h1", [_gpu("0000:3b:00.0", host="h2")])
        assert e2.value.field == "host"
        with pytest.raises(InvalidArgument) as e2:
            repo.upsert_devices(s, "h1", [_gpu("0000:3b:00.0", kind="tpu")])
        assert e2.value.field == "kind"
        with pytest.raises(InvalidArgument) as e2:
            repo.upsert_devices(s, "h1", [_gpu("0000:3b:00.0", id="h1/other")])
        assert e2.value.field == "id"
        with pytest.raises(InvalidArgument) as e2:
            repo.upsert_devices(s, "h1", [_gpu("0000:3b:00.0"), _gpu("0000:3b:00.0")])
        assert e2.value.field == "address"
        with pytest.raises(NotFound):
            repo.get_device(s, "h1/none")
        with pytest.raises(InvalidArgument):
            repo.set_device_health(s, "h1/none", "great")


# ---------------------------------------------------------------------------- whole claims


def test_whole_claim_then_double_claim_fails_naming_device(
    store: Store, gpus: list[str], vms: list[str]
) -> None:
    with store.session() as s:
        c = repo.claim_device(s, vms[0], ClaimRequest(gpus[0], original_driver="nvidia"))
    assert c.exclusive_device_id == gpus[0]
    with store.session() as s:
        with pytest.raises(FailedPrecondition) as e:
            repo.claim_device(s, vms[1], ClaimRequest(gpus[0]))
        assert gpus[0] in str(e.value) and vms[0] in str(e.value)
        assert e.value.field == "device_id"
        with pytest.raises(FailedPrecondition):
            repo.claim_device(s, vms[1], ClaimRequest(gpus[0], kind="mdev", mdev_type="x"))
    with store.read_session() as s:
        claims = repo.list_claims(s, device_id=gpus[0])
        assert [(x.vm_id, x.original_driver) for x in claims] == [(vms[0], "nvidia")]


def test_database_itself_rejects_two_whole_claims(
    store: Store, gpus: list[str], vms: list[str]
) -> None:
    """Bypass the repo checks: the UNIQUE column alone must refuse the second claim."""
    with pytest.raises(IntegrityError), store.session() as s:
        for vm in vms[:2]:
            s.add(DeviceClaim(device_id=gpus[0], vm_id=vm, kind="pci", exclusive_device_id=gpus[0]))
            s.flush()
    with store.session() as s:  # non-exclusive claims (NULL) never collide
        for vm in vms[:2]:
            s.add(DeviceClaim(device_id=gpus[1], vm_id=vm, kind="mdev", mdev_type="nvidia-471"))
        s.flush()
        assert len(repo.list_claims(s, device_id=gpus[1])) == 2


def test_claim_batch_is_all_or_nothing(store: Store, gpus: list[str], vms: list[str]) -> None:
    with store.session() as s:
        repo.claim_device(s, vms[0], ClaimRequest(gpus[1], kind="mdev", mdev_type="nvidia-471"))
    with store.session() as s:
        with pytest.raises(FailedPrecondition):
            repo.claim_devices(s, vms[1], [ClaimRequest(gpus[0]), ClaimRequest(gpus[1])])
        assert repo.list_claims(s, vm_id=vms[1]) == []  # the first one was rolled back
        made = repo.claim_devices(s, vms[1], [ClaimRequest(gpus[0]), ClaimRequest(gpus[2])])
        assert [c.device_id for c in made] == [gpus[0], gpus[2]]
    # the same device twice in one batch
    with store.session() as s, pytest.raises(FailedPrecondition):
        repo.claim_devices(s, vms[2], [ClaimRequest(gpus[0]), ClaimRequest(gpus[0])])


def test_claim_not_found_and_absent_device(store: Store, gpus: list[str], vms: list[str]) -> None:
    with store.session() as s:
        with pytest.raises(NotFound) as e:
            repo.claim_device(s, "no-vm", ClaimRequest(gpus[0]))
        assert e.value.field == "vm_id"
        with pytest.raises(NotFound) as e:
            repo.claim_device(s, vms[0], ClaimRequest("h1/0000:00:00.0"))
        assert e.value.field == "device_id"
        with pytest.raises(InvalidArgument) as e2:
            repo.claim_device(s, vms[0], ClaimRequest(gpus[0], kind="half"))
        assert e2.value.field == "kind"
        repo.upsert_devices(s, "h1", [_gpu("0000:5e:00.0"), _gpu("0000:86:00.0")])  # 3b gone
        with pytest.raises(FailedPrecondition) as e3:
            repo.claim_device(s, vms[0], ClaimRequest(gpus[0]))
        assert "no longer present" in str(e3.value)


def test_racing_whole_claims_exactly_one_wins(
    store: Store, gpus: list[str], vms: list[str]
) -> None:
    barrier = threading.Barrier(4)
    outcomes: list[str] = []
    lock = threading.Lock()

    def claim(vm_id: str) -> None:
        barrier.wait()
        try:
            with store.session() as s:
                repo.claim_device(s, vm_id, ClaimRequest(gpus[0]))
            result = "won"
        except FailedPrecondition:
            result = "lost"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=claim, args=(v,)) for v in vms]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(outcomes) == ["lost", "lost", "lost", "won"]
    with store.read_session() as s:
        assert len(repo.list_claims(s, device_id=gpus[0])) == 1


# ---------------------------------------------------------------------------- vGPU / MIG


def test_mdev_claims_one_type_per_gpu_and_capacity(
    store: Store, gpus: list[str], vms: list[str]
) -> None:
    gpu = gpus[1]
    with store.session() as s:
        repo.claim_device(s, vms[0], ClaimRequest(gpu, kind="mdev", mdev_type="nvidia-471"))
        repo.claim_device(s, vms[1], ClaimRequest(gpu, kind="mdev", mdev_type="nvidia-471"))
    with store.session() as s:
        with pytest.raises(ResourceExhausted):  # max_instances 2
            repo.claim_device(s, vms[2], ClaimRequest(gpu, kind="mdev", mdev_type="nvidia-471"))
        with pytest.raises(FailedPrecondition) as e:
            repo.claim_device(s, vms[2], ClaimRequest(gpu, kind="mdev", mdev_type="nvidia-472"))
        assert "runs vGPU type nvidia-471" in str(e.value)
        with pytest.raises(FailedPrecondition) as e:
            repo.claim_device(s, vms[2], ClaimRequest(gpu))  # whole, while vGPUs exist
        assert "vGPU/MIG claims" in str(e.value)
        with pytest.raises(InvalidArgument) as e2:
            repo.claim_device(s, vms[2], ClaimRequest(gpu, kind="mdev"))
        assert e2.value.field == "mdev_type"
        with pytest.raises(FailedPrecondition) as e:
            repo.claim_device(s, vms[2], ClaimRequest(gpus[0], kind="mdev", mdev_type="x"))
        assert e.value.field == "mdev_type"  # device offers no such type


def test_mig_claims_count_slices(store: Store, gpus: list[str], vms: list[str]) -> None:
    gpu = gpus[2]
    with store.session() as s:
        repo.claim_device(s, vms[0], ClaimRequest(gpu, kind="mig", mig_profile="3g.40gb"))
        repo.claim_device(s, vms[1], ClaimRequest(gpu, kind="mig", mig_profile="3g.40gb"))
        repo.claim_device(s, vms[2], ClaimRequest(gpu, kind="mig", mig_profile="1g.10gb"))
    with store.session() as s:
        with pytest.raises(ResourceExhausted) as e:
            repo.claim_device(s, vms[3], ClaimRequest(gpu, kind="mig", mig_profile="1g.10gb"))
        assert "0 of 7" in str(e.value)
        with pytest.raises(FailedPrecondition):
            repo.claim_device(s, vms[3], ClaimRequest(gpu, kind="mig", mig_profile="2g.20gb"))
        with pytest.raises(FailedPrecondition) as e2:
            repo.claim_device(s, vms[3], ClaimRequest(gpus[0], kind="mig", mig_profile="1g"))
        assert "not in MIG mode" in str(e2.value)
        with pytest.raises(InvalidArgument):
            repo.claim_device(s, vms[3], ClaimRequest(gpu, kind="mig"))


def test_release_returns_undo_facts(store: Store, gpus: list[str], vms: list[str]) -> None:
    with store.session() as s:
        c = repo.claim_device(s, vms[0], ClaimRequest(gpus[1], kind="mdev", mdev_type="nvidia-471"))
        repo.claim_device(s, vms[0], ClaimRequest(gpus[0], original_driver="nvidia"))
        repo.update_claim(s, c.id, mdev_uuid="6f1c-uuid")
    with store.session() as s:
        assert {x.device_id for x in repo.list_claims(s, host="h1")} == {gpus[0], gpus[1]}
        assert repo.list_claims(s, host="h2") == []
        released = repo.release_claims(s, vms[0])
        assert {(x.mdev_uuid, x.original_driver) for x in released} == {
            ("6f1c-uuid", ""),
            ("", "nvidia"),
        }
        assert repo.list_claims(s, vm_id=vms[0]) == []
        # the whole device is free again
        c2 = repo.claim_device(s, vms[1], ClaimRequest(gpus[0]))
        repo.release_claim(s, c2.id)
        with pytest.raises(NotFound):
            repo.release_claim(s, c2.id)
        with pytest.raises(NotFound):
            repo.update_claim(s, c2.id, mdev_uuid="x")
