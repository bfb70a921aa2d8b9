"""Validation of create requests: each bad field is named, good requests pass."""

from __future__ import annotations

import dataclasses

import pytest

from vmmgr.errors import InvalidArgument
from vmmgr.requests import (
    CloudInitRequest,
    DiskRequest,
    FpgaRequest,
    NicRequest,
    VmCreate,
    validate_vm_create,
)
from vmmgr.snapshot import GpuRequest

GOOD = VmCreate(name="web-1", vcpus=2, memory_mib=512, disks=(DiskRequest("tiny"),))


def test_good_request_passes() -> None:
    validate_vm_create(GOOD)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": ""}, "spec.name"),
        ({"name": "Web"}, "spec.name"),
        ({"name": "a" * 64}, "spec.name"),
        ({"name": "x</name><devices>"}, "spec.name"),
        ({"name": "-x"}, "spec.name"),
        ({"vcpus": 0}, "spec.vcpus"),
        ({"vcpus": 100000}, "spec.vcpus"),
        ({"memory_mib": 1}, "spec.memory_mib"),
        ({"disks": ()}, "spec.disks"),
        ({"disks": (DiskRequest("Bad Image"),)}, "spec.disks[0].image"),
        ({"disks": (DiskRequest("tiny", bus="floppy"),)}, "spec.disks[0].bus"),
        ({"disks": (DiskRequest("tiny", size_gib=-1),)}, "spec.disks[0].size_gib"),
        ({"nics": (NicRequest(network="br0;rm"),)}, "spec.networks[0].network"),
        ({"nics": (NicRequest(mac="zz:00:00:00:00:00"),)}, "spec.networks[0].mac"),
        ({"description": "x" * 5000}, "spec.description"),
        ({"description": "nul\x00"}, "spec.description"),
        ({"gpus": (GpuRequest("H100", 0),)}, "spec.gpus[0].count"),
        ({"gpus": (GpuRequest("<H100>"),)}, "spec.gpus[0].model"),
        ({"gpus": (GpuRequest("H100"),), "mig_profile": "1g.10gb"}, "spec.gpus"),
        ({"fpgas": (FpgaRequest("ALVEO", 99),)}, "spec.fpgas[0].count"),
        ({"groups": ("Bad Group",)}, "spec.groups[0]"),
        ({"labels": {"bad key!": "v"}}, "spec.labels"),
        ({"project": ""}, "spec.project"),
        ({"domain_type": "xen"}, "spec.domain_type"),
        ({"watchdog": "explode"}, "spec.watchdog"),
        (
            {"cloud_init": CloudInitRequest(ssh_authorized_keys=("a\nb",))},
            "spec.cloud_init.ssh_authorized_keys[0]",
        ),
        (
            {"cloud_init": CloudInitRequest(user_data="#cloud-config", ssh_authorized_keys=("k",))},
            "spec.cloud_init.ssh_authorized_keys",
        ),
        ({"host": "Bad Host"}, "spec.host"),
    ],
)
def test_bad_field_is_named(changes: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        validate_vm_create(dataclasses.replace(GOOD, **changes))  # type: ignore[arg-type]
    assert err.value.field == field


def test_json_round_trip_keeps_every_field() -> None:
    req = dataclasses.replace(
        GOOD,
        nics=(NicRequest("default", "52:54:00:00:00:01"),),
        cloud_init=CloudInitRequest(ssh_authorized_keys=("ssh-ed25519 AAAA",), hostname="h"),
        gpus=(GpuRequest("H100", 2),),
        fpgas=(FpgaRequest("ALVEO", 1, "p", True),),
        groups=("g",),
        labels={"a": "b"},
        required_host_tags=("gpu",),
    )
    assert VmCreate.from_json(req.to_json()) == req
