"""The lab itself: separate libvirt hosts, their pools, crash/restart, cleanup, the CLI."""

from __future__ import annotations

import json
import subprocess

import libvirt
import pytest
from lxml import etree

from drivers.lab import Lab, cleanup
from drivers.lab.cli import main as lab_cli
from drivers.lab.netns import list_links, list_netns, netns_pids, netns_supported
from vmmgr.errors import FailedPrecondition, InvalidArgument

pytestmark = pytest.mark.lab


def _host_uuid(conn: libvirt.virConnect) -> str:
    return etree.fromstring(conn.getCapabilities().encode()).findtext("host/uuid") or ""


def test_hosts_are_separate_libvirts_with_distinct_uuids(lab, conns) -> None:
    uuids = {_host_uuid(conns[i]) for i in range(2)}
    assert len(uuids) == 2
    assert uuids == {h.host_uuid for h in lab.hosts}
    for i, h in enumerate(lab.hosts):
        assert conns[i].getURI() == h.uri
        pools = {p.name(): p for p in conns[i].listAllStoragePools(0)}
        assert pools["shared"].isActive() and pools["local"].isActive()


def test_local_pools_are_per_host_and_shared_pool_is_common(lab, conns) -> None:
    vol = "<volume><name>probe.raw</name><capacity>1024</capacity></volume>"
    local0 = conns[0].storagePoolLookupByName("local")
    shared0 = conns[0].storagePoolLookupByName("shared")
    v_local = local0.createXML(vol, 0)
    v_shared = shared0.createXML(vol, 0)
    try:
        local1 = conns[1].storagePoolLookupByName("local")
        shared1 = conns[1].storagePoolLookupByName("shared")
        local1.refresh(0)
        shared1.refresh(0)
        assert "probe.raw" not in local1.listVolumes()
        assert "probe.raw" in shared1.listVolumes()
        # the same in-namespace path, different files per host
        assert v_local.path() == "/var/lib/libvirt/images/probe.raw"
    finally:
        v_local.delete(0)
        v_shared.delete(0)


def test_kill_host_makes_it_unreachable_and_start_host_brings_it_back(lab, conns, revive) -> None:
    revive(1)
    lab.kill_host(1)
    assert not lab.host_running(1)
    assert netns_pids(lab.hosts[1].netns) == []
    with pytest.raises(libvirt.libvirtError):
        libvirt.open(lab.hosts[1].uri)
    assert conns[0].getLibVersion() > 0  # the other host is unaffected
    lab.start_host(1)
    assert lab.host_running(1)
    assert _host_uuid(conns[1]) == lab.hosts[1].host_uuid


def test_start_host_refuses_a_running_host(lab) -> None:
    with pytest.raises(FailedPrecondition, match="running"):
        lab.start_host(0)


def test_up_refuses_a_subnet_already_routed(lab, tmp_path) -> None:
    other = Lab(1, base_dir=str(tmp_path), subnet=str(lab.subnet), prefix="vmlabq")
    with pytest.raises(FailedPrecondition, match="already routed"):
        other.up()
    assert list_netns("vmlabq-") == []


def test_bad_lab_arguments_name_the_field() -> None:
    with pytest.raises(InvalidArgument) as e:
        Lab(2, subnet="8.8.8.0/24")
    assert e.value.field == "subnet"
    with pytest.raises(InvalidArgument) as e:
        Lab(0)
    assert e.value.field == "n"


def test_cleanup_removes_leftovers_of_a_crashed_run(tmp_path) -> None:
    if netns_supported():
        pytest.skip("network namespaces unavailable")
    subprocess.run(["ip", "netns", "add", "vmlabz-h0"], check=True)
    subprocess.run(["ip", "link", "add", "vmlabz-br", "type", "bridge"], check=True)
    sleeper = subprocess.Popen(["ip", "netns", "exec", "vmlabz-h0", "sleep", "300"])
    try:
        removed = cleanup("vmlabz", str(tmp_path))
        assert "netns vmlabz-h0" in removed and "link vmlabz-br" in removed
        assert list_netns("vmlabz-") == [] and list_links("vmlabz-") == []
        assert sleeper.wait(timeout=10) != 0  # killed with the namespace
    finally:
        sleeper.kill()
        cleanup("vmlabz", None)


def test_cli_status_prints_every_uri(lab, capsys) -> None:
    assert lab_cli(["--base-dir", lab.base_dir, "status", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [h["uri"] for h in out["hosts"]] == [h.uri for h in lab.hosts]
    assert all(h["running"] for h in out["hosts"])


def test_cli_status_without_a_lab_fails(tmp_path, capsys) -> None:
    assert lab_cli(["--base-dir", str(tmp_path), "status"]) == 1
    assert "no lab" in capsys.readouterr().err
