"""The libvirt driver against libvirt's test driver: one private host per test (test:///FILE).

The node file (TestDriverNode) gives a 2-cell, 8-CPU, 8 GiB host with a dir pool and one
running foreign domain (no vmmgr metadata).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import libvirt
import pytest

from drivers.hypervisor.libvirt import (
    LibvirtConfig,
    LibvirtConnection,
    LibvirtHypervisor,
    event_loop_running,
    map_libvirt_error,
    test_uri,
    translated,
)
from drivers.hypervisor.libvirt.states import event_names
from drivers.hypervisor.libvirt.xml import (
    Domain,
    Memory,
    StoragePool,
    Vcpu,
    parse_domain,
    vmmgr_metadata,
)
from drivers.hypervisor.libvirt.xml.base import to_string
from drivers.hypervisor.libvirt.xml.testnode import TestDriverNode
from vmmgr.errors import (
    AlreadyExists,
    DriverError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from vmmgr.ports import DiskSpec, DomainEvent, DomainSpec, DomainState, NicSpec

pytestmark = pytest.mark.libvirt

FOREIGN_UUID = "6695eb01-f6a4-8304-79aa-97f2502e193f"
FOREIGN = Domain(type="test", name="foreign", uuid=FOREIGN_UUID, memory=Memory(65536), vcpu=Vcpu(1))
CONFIG = LibvirtConfig(reconnect_min_backoff_s=0.2, shutdown_poll_s=0.01)
GPU_DEVICE = """<device>
  <name>pci_0000_3b_00_0</name>
  <capability type='pci'>
    <class>0x030200</class>
    <domain>0</domain><bus>59</bus><slot>0</slot><function>0</function>
    <product id='0x2330'>GH100 [H100 SXM5 80GB]</product>
    <vendor id='0x10de'>NVIDIA Corporation</vendor>
    <iommuGroup number='12'>
      <address domain='0x0000' bus='0x3b' slot='0x00' function='0x0'/>
    </iommuGroup>
    <numa node='1'/>
  </capability>
</device>"""


def write_node(tmp_path: Path) -> str:
    node = TestDriverNode(
        pools=(StoragePool(name="vmmgr", target_path=str(tmp_path / "pool")),),
        domains=(FOREIGN,),
    )
    return TestDriverNode.with_device_xml(node, GPU_DEVICE).write(str(tmp_path / "node.xml"))


@pytest.fixture
def node_file(tmp_path: Path) -> str:
    return write_node(tmp_path)


@pytest.fixture
def conn(node_file: str) -> Iterator[LibvirtConnection]:
    c = LibvirtHypervisor(CONFIG).connect(test_uri(node_file), host_name="h1")
    yield c
    c.close()


def spec(name: str = "vm1", **kw: object) -> DomainSpec:
    base = DomainSpec(
        vm_id=str(uuid.uuid4()),
        name=name,
        vcpus=2,
        memory_mib=128,
        owner="alice",
        disks=(DiskSpec(path="/pool/vm1.qcow2", target="vda"),),
        nics=(NicSpec(network="default"),),
        labels={"team": "ml"},
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def state(conn: LibvirtConnection, vm_id: str) -> DomainState:
    info = conn.get_domain(vm_id)
    assert info is not None
    return info.state


# ---------------------------------------------------------------------- host


def test_connect_starts_the_event_loop_and_reports_the_host(conn: LibvirtConnection) -> None:
    assert event_loop_running()
    assert conn.alive()
    info = conn.host_info()
    assert info.hypervisor == "TEST"
    assert (info.cpus, info.memory_mib) == (8, 8192)
    assert [(c.id, c.cpus, c.memory_mib) for c in info.numa_cells] == [(0, 4, 4096), (1, 4, 4096)]
    assert "kvm" in info.domain_types
    assert info.libvirt_version.count(".") == 2 and info.hostname


def test_test_host_uuid_is_stable_per_uri(node_file: str, tmp_path: Path) -> None:
    hv = LibvirtHypervisor(CONFIG)
    a, b = (hv.connect(test_uri(node_file), host_name=n) for n in ("a", "b"))
    (tmp_path / "other").mkdir()
    other = hv.connect(test_uri(write_node(tmp_path / "other")), host_name="c")
    try:
        assert a.host_info().host_uuid == b.host_info().host_uuid
        assert a.host_info().host_uuid != other.host_info().host_uuid
    finally:
        for c in (a, b, other):
            c.close()


def test_node_devices_are_listed_as_xml(conn: LibvirtConnection) -> None:
    xmls = conn.list_node_device_xml()
    assert any("pci_0000_3b_00_0" in x and "0x10de" in x for x in xmls)


# ---------------------------------------------------------------------- lifecycle


def test_domain_lifecycle(conn: LibvirtConnection) -> None:
    s = spec()
    info = conn.define(s)
    assert (info.uuid, info.vm_id, info.owner) == (s.vm_id, s.vm_id, "alice")
    assert (info.state, info.vcpus, info.memory_mib, info.persistent) == (
        DomainState.STOPPED,
        2,
        128,
        True,
    )
    conn.start(s.vm_id)
    assert state(conn, s.vm_id) is DomainState.RUNNING
    conn.suspend(s.vm_id)
    assert state(conn, s.vm_id) is DomainState.PAUSED
    conn.resume(s.vm_id)
    assert state(conn, s.vm_id) is DomainState.RUNNING
    conn.reboot(s.vm_id)
    assert state(conn, s.vm_id) is DomainState.RUNNING
    assert conn.shutdown(s.vm_id, timeout_s=2.0) is True
    assert state(conn, s.vm_id) is DomainState.STOPPED
    assert conn.shutdown(s.vm_id, timeout_s=0) is True  # not running: nothing to wait for
    conn.start(s.vm_id)
    conn.destroy(s.vm_id)
    assert state(conn, s.vm_id) is DomainState.STOPPED
    conn.destroy(s.vm_id)  # idempotent
    conn.undefine(s.vm_id)
    assert conn.get_domain(s.vm_id) is None
    assert [d.name for d in conn.list_domains()] == ["foreign"]


def test_redefine_updates_the_same_domain(conn: LibvirtConnection) -> None:
    s = spec()
    conn.define(s)
    info = conn.define(replace(s, memory_mib=256, vcpus=4))
    assert (info.memory_mib, info.vcpus) == (256, 4)
    assert [d.uuid for d in conn.list_domains()].count(s.vm_id) == 1


def test_operations_in_the_wrong_state_fail_with_failed_precondition(
    conn: LibvirtConnection,
) -> None:
    s = spec()
    conn.define(s)
    for op in (conn.suspend, conn.resume, conn.reboot):
        with pytest.raises(FailedPrecondition):
            op(s.vm_id)
    conn.start(s.vm_id)
    with pytest.raises(FailedPrecondition):
        conn.start(s.vm_id)  # already running
    with pytest.raises(FailedPrecondition):
        conn.resume(s.vm_id)
    with pytest.raises(FailedPrecondition):
        conn.undefine(s.vm_id)
    assert state(conn, s.vm_id) is DomainState.RUNNING


def test_missing_domains(conn: LibvirtConnection) -> None:
    missing = str(uuid.uuid4())
    assert conn.get_domain(missing) is None
    for op in (conn.start, conn.destroy, conn.undefine, conn.suspend, conn.domain_xml):
        with pytest.raises(NotFound):
            op(missing)
    with pytest.raises(NotFound):
        conn.shutdown(missing, 1)


def test_bad_vm_id_is_invalid_argument(conn: LibvirtConnection) -> None:
    with pytest.raises(InvalidArgument) as e:
        conn.start("../../etc")
    assert e.value.field == "vm_id"
    with pytest.raises(InvalidArgument):
        conn.get_domain("nope")


def test_bad_spec_is_rejected_before_libvirt(conn: LibvirtConnection) -> None:
    with pytest.raises(InvalidArgument) as e:
        conn.define(spec(vcpus=0))
    assert e.value.field == "vcpus"
    assert [d.name for d in conn.list_domains()] == ["foreign"]


def test_numa_placement_uses_the_cells_of_the_host(conn: LibvirtConnection) -> None:
    s = spec(numa_node=1)
    conn.define(s)
    d = parse_domain(conn.domain_xml(s.vm_id))
    assert d.vcpu.cpuset == "4-7"
    assert d.numatune is not None and d.numatune.nodeset == "1"
    with pytest.raises(InvalidArgument) as e:
        conn.define(spec(name="vm2", numa_node=2))
    assert e.value.field == "numa_node"


# ---------------------------------------------------------------------- ownership


def test_foreign_domains_are_reported_but_never_touched(conn: LibvirtConnection) -> None:
    listed = {d.name: d for d in conn.list_domains()}
    assert listed["foreign"].vm_id is None
    assert listed["foreign"].state is DomainState.RUNNING
    got = conn.get_domain(FOREIGN_UUID)
    assert got is not None and got.vm_id is None
    for op in (
        conn.start,
        conn.destroy,
        conn.undefine,
        conn.suspend,
        conn.resume,
        conn.reboot,
        conn.lookup_domain,
    ):
        with pytest.raises(FailedPrecondition, match="foreign"):
            op(FOREIGN_UUID)
    with pytest.raises(FailedPrecondition):
        conn.shutdown(FOREIGN_UUID, 0.1)
    assert state(conn, FOREIGN_UUID) is DomainState.RUNNING
    assert "<name>foreign</name>" in conn.domain_xml(FOREIGN_UUID)  # reading is fine


def test_define_refuses_a_foreign_uuid_and_a_taken_name(conn: LibvirtConnection) -> None:
    with pytest.raises(FailedPrecondition):
        conn.define(spec(name="mine", vm_id=FOREIGN_UUID))
    with pytest.raises(AlreadyExists) as e:
        conn.define(spec(name="foreign"))
    assert e.value.field == "name"
    got = conn.get_domain(FOREIGN_UUID)
    assert got is not None and got.vm_id is None and got.name == "foreign"


def test_metadata_round_trips_through_libvirt(conn: LibvirtConnection) -> None:
    s = spec(owner="bob", labels={"team": "ml", "tier": "gpu"})
    conn.define(s)
    xml = conn.domain_xml(s.vm_id)
    assert vmmgr_metadata(xml) == (s.vm_id, "bob")
    inst = parse_domain(xml).vmmgr
    assert inst is not None and dict(inst.labels) == {"team": "ml", "tier": "gpu"}
    dom = conn.lookup_domain(s.vm_id)
    raw = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, "https://vmmgr.dev/xmlns/domain/1")
    assert s.vm_id in raw


def test_hostile_name_and_description_survive_libvirt(conn: LibvirtConnection) -> None:
    name = "a\"b'c<d>&e ]]> f"
    description = "</description><devices><hostdev mode='subsystem' type='pci'/></devices>"
    s = spec(name=name, description=description, owner="<owner>&")
    info = conn.define(s)
    assert info.name == name and info.owner == "<owner>&"
    d = parse_domain(conn.domain_xml(s.vm_id))
    assert (d.name, d.description) == (name, description)
    assert d.devices.hostdevs == () and len(d.devices.disks) == 1


# ---------------------------------------------------------------------- events


def test_events_of_our_own_calls_are_not_reported_but_a_destroys_are(
    conn: LibvirtConnection,
) -> None:
    """The caller of define/start/suspend/resume/undefine records the outcome itself. A destroy's
    STOPPED is reported: on qemu it follows the SHUTDOWN that tells of the kill, and settles the
    state if that one is handled after the caller recorded it (tests/real checks that)."""
    events: list[DomainEvent] = []
    conn.on_domain_event(events.append)
    s = spec()
    conn.define(s)
    conn.start(s.vm_id)
    conn.suspend(s.vm_id)
    conn.resume(s.vm_id)
    conn.destroy(s.vm_id)
    conn.undefine(s.vm_id)
    assert conn.drain_events()
    assert [(e.reason, e.detail, e.state, e.vm_id) for e in events] == [
        ("stopped", "destroyed", DomainState.STOPPED, s.vm_id)
    ]


def test_a_finished_shutdown_leaves_the_state_to_be_read() -> None:
    """SHUTDOWN means the shutdown finished (qemu also sends it for a destroy's kill): the
    domain is stopped or about to be, never "shutting down" for long."""
    assert event_names(libvirt.VIR_DOMAIN_EVENT_SHUTDOWN, 2) == ("shutdown", "host", None)
    assert event_names(libvirt.VIR_DOMAIN_EVENT_STOPPED, 1) == (
        "stopped",
        "destroyed",
        DomainState.STOPPED,
    )


def test_lifecycle_events_of_others_on_our_domain_reach_listeners(
    conn: LibvirtConnection,
) -> None:
    events: list[DomainEvent] = []
    s = spec()
    conn.define(s)
    conn.on_domain_event(events.append)
    raw = conn.virconn.lookupByUUIDString(s.vm_id)  # someone else, on the same libvirt
    raw.create()
    raw.suspend()
    raw.resume()
    raw.destroy()
    raw.undefine()
    assert conn.drain_events()
    mine = [(e.reason, e.detail, e.state) for e in events if e.uuid == s.vm_id]
    assert mine == [
        ("started", "booted", DomainState.RUNNING),
        ("suspended", "paused", DomainState.PAUSED),
        ("resumed", "unpaused", DomainState.RUNNING),
        ("stopped", "destroyed", DomainState.STOPPED),
        ("undefined", "removed", DomainState.STOPPED),
    ]
    assert {(e.vm_id, e.host, e.name) for e in events} == {(s.vm_id, "h1", "vm1")}


def test_only_the_event_our_call_caused_is_dropped(conn: LibvirtConnection) -> None:
    """A call that fails leaves nothing marked, and the next event of the same kind (someone
    else's) is reported."""
    events: list[DomainEvent] = []
    s = spec()
    conn.define(s)
    conn.start(s.vm_id)
    conn.on_domain_event(events.append)
    with pytest.raises(FailedPrecondition, match="already running"):
        conn.start(s.vm_id)
    raw = conn.virconn.lookupByUUIDString(s.vm_id)
    raw.destroy()
    raw.create()
    conn.suspend(s.vm_id)
    raw.resume()
    assert conn.drain_events()
    assert [e.reason for e in events] == ["stopped", "started", "resumed"]


def test_events_of_foreign_domains_carry_no_vm_id(conn: LibvirtConnection) -> None:
    events: list[DomainEvent] = []
    conn.on_domain_event(events.append)
    conn.virconn.lookupByUUIDString(FOREIGN_UUID).destroy()  # someone else acts on it
    assert conn.drain_events()
    assert [(e.name, e.vm_id, e.reason) for e in events] == [("foreign", None, "stopped")]


def test_a_failing_listener_does_not_stop_the_others(conn: LibvirtConnection) -> None:
    seen: list[str] = []

    def broken(_e: DomainEvent) -> None:
        raise RuntimeError("listener bug")

    conn.on_domain_event(broken)
    conn.on_domain_event(lambda e: seen.append(e.reason))
    conn.virconn.lookupByUUIDString(FOREIGN_UUID).destroy()
    assert conn.drain_events()
    assert seen == ["stopped"]


# ---------------------------------------------------------------------- errors


def _raise(fn: object) -> libvirt.libvirtError:
    try:
        fn()  # type: ignore[operator]
    except libvirt.libvirtError as e:
        return e
    raise AssertionError("no libvirtError")


def test_libvirt_errors_map_to_vmmgr_errors(conn: LibvirtConnection) -> None:
    v = conn.virconn
    missing = _raise(lambda: v.lookupByUUIDString(str(uuid.uuid4())))
    mapped = map_libvirt_error(missing, "look up")
    assert isinstance(mapped, NotFound)
    assert mapped.message.startswith("look up: ") and "not found" in mapped.message.lower()
    assert mapped.details["libvirt_code"] == str(libvirt.VIR_ERR_NO_DOMAIN)

    stopped = v.defineXML(
        to_string(Domain("test", "plain", str(uuid.uuid4()), Memory(1024), Vcpu(1)).build())
    )
    assert isinstance(map_libvirt_error(_raise(stopped.destroy), "x"), FailedPrecondition)
    assert isinstance(
        map_libvirt_error(_raise(lambda: v.storagePoolLookupByName("nope")), "x"), NotFound
    )
    bad_xml = _raise(lambda: v.defineXML("<domain type='test'><memory>x</memory></domain>"))
    assert type(map_libvirt_error(bad_xml, "x")) is DriverError

    with pytest.raises(NotFound), translated("read"):
        v.lookupByName("nope")


def test_calls_on_a_dead_connection_map_to_unavailable(node_file: str) -> None:
    raw = libvirt.open(test_uri(node_file))
    raw.close()
    err = _raise(raw.getInfo)
    assert isinstance(map_libvirt_error(err, "info"), Unavailable)


# ---------------------------------------------------------------------- connection


def test_unreachable_uri_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(Unavailable):
        LibvirtHypervisor(CONFIG).connect(test_uri(str(tmp_path / "missing.xml")), host_name="x")


def test_closed_connection_refuses_calls(conn: LibvirtConnection) -> None:
    conn.close()
    assert not conn.alive()
    with pytest.raises(Unavailable):
        conn.list_domains()
    with pytest.raises(Unavailable):
        conn.reconnect()
    conn.close()  # twice is fine


def _simulate_close(conn: LibvirtConnection, reason: int) -> None:
    """What libvirt does on keepalive timeout / EOF (the test driver never loses its link;
    tests/real covers a real disconnect): call the registered close callback."""
    conn._on_libvirt_close(conn.virconn, reason, None)


def test_close_callback_marks_dead_and_next_use_reconnects(conn: LibvirtConnection) -> None:
    reasons: list[str] = []
    conn.on_close(reasons.append)
    s = spec()
    conn.define(s)
    old = conn.virconn
    _simulate_close(conn, libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE)
    assert not conn.alive()
    assert conn.drain_events()
    assert reasons == ["keepalive"]
    names = [d.name for d in conn.list_domains()]  # reconnects: a fresh private test host
    assert conn.alive() and conn.virconn is not old
    assert names == ["foreign"]


def test_failed_reconnects_back_off(conn: LibvirtConnection, node_file: str) -> None:
    _simulate_close(conn, libvirt.VIR_CONNECT_CLOSE_REASON_EOF)
    hidden = node_file + ".away"
    os.rename(node_file, hidden)
    with pytest.raises(Unavailable):
        conn.list_domains()  # tries, fails
    with pytest.raises(Unavailable, match="next reconnect attempt"):
        conn.list_domains()  # within the backoff: does not even try
    os.rename(hidden, node_file)
    with pytest.raises(Unavailable, match="next reconnect attempt"):
        conn.list_domains()
    time.sleep(CONFIG.reconnect_min_backoff_s + 0.05)
    assert [d.name for d in conn.list_domains()] == ["foreign"]
    assert conn.alive()


def test_reconnect_replaces_the_connection_and_keeps_listeners(conn: LibvirtConnection) -> None:
    events: list[DomainEvent] = []
    conn.on_domain_event(events.append)
    old = conn.virconn
    conn.reconnect()
    assert conn.virconn is not old and conn.alive()
    conn.virconn.lookupByUUIDString(FOREIGN_UUID).destroy()
    assert conn.drain_events()
    assert [e.reason for e in events] == ["stopped"]


# ---------------------------------------------------------------------- create path shortcuts


def test_define_describes_the_new_domain_as_libvirt_does(conn: LibvirtConnection) -> None:
    """define builds its answer from the spec instead of reading the domain back."""
    for s in (spec(), spec(name="a\"b'c<d>&e", owner="<owner>&", vcpus=3, memory_mib=200)):
        assert conn.define(s) == conn.get_domain(s.vm_id)


def test_define_of_a_new_uuid_skips_the_look_up_and_still_maps_a_taken_name(
    conn: LibvirtConnection,
) -> None:
    """``new=True`` (a create's fresh uuid) asks libvirt nothing before defineXML; the
    answer and the errors are those of an ordinary define."""
    calls: list[str] = []
    real = conn.virconn
    s = spec()

    class Counting:
        def __getattr__(self, name: str) -> object:
            calls.append(name)
            return getattr(real, name)

    conn._conn = Counting()  # type: ignore[assignment]
    try:
        got = conn.define(s, new=True)
        assert "lookupByUUIDString" not in calls and "defineXML" in calls
        with pytest.raises(AlreadyExists):
            conn.define(spec(name="foreign", vm_id=str(uuid.uuid4())), new=True)
    finally:
        conn._conn = real
    assert got == conn.get_domain(s.vm_id)


def test_define_refuses_a_foreign_domain_with_the_same_uuid_and_name(
    conn: LibvirtConnection,
) -> None:
    """libvirt would overwrite it (same uuid and name is a redefinition): vmmgr must not."""
    before = conn.domain_xml(FOREIGN_UUID)
    with pytest.raises(FailedPrecondition, match="foreign"):
        conn.define(spec(name="foreign", vm_id=FOREIGN_UUID))
    assert conn.domain_xml(FOREIGN_UUID) == before
    assert state(conn, FOREIGN_UUID) is DomainState.RUNNING


def test_redefine_under_a_name_taken_by_another_domain_is_already_exists(
    conn: LibvirtConnection,
) -> None:
    s = spec()
    conn.define(s)
    with pytest.raises(AlreadyExists) as e:
        conn.define(replace(s, name="foreign"))
    assert e.value.field == "name" and FOREIGN_UUID in e.value.message
    got = conn.get_domain(s.vm_id)
    assert got is not None and got.name == "vm1"


def test_start_of_a_running_domain_is_failed_precondition(conn: LibvirtConnection) -> None:
    """No isActive before create: libvirt's refusal (INTERNAL_ERROR on the test driver,
    OPERATION_INVALID on qemu) is mapped, also when someone else started it."""
    s = spec()
    conn.define(s)
    conn.virconn.lookupByUUIDString(s.vm_id).create()  # started behind vmmgr's back
    with pytest.raises(FailedPrecondition, match="already running"):
        conn.start(s.vm_id)
    assert state(conn, s.vm_id) is DomainState.RUNNING


def test_a_domain_redefined_without_metadata_behind_our_back_is_foreign_again(
    conn: LibvirtConnection,
) -> None:
    """The handles of domains vmmgr defined are reused without reading their XML; the DEFINED
    event of someone else's redefinition drops that, so the domain is refused again."""
    events: list[DomainEvent] = []
    conn.on_domain_event(events.append)
    s = spec()
    conn.define(s)
    conn.start(s.vm_id)
    conn.destroy(s.vm_id)
    plain = Domain(type="test", name="vm1", uuid=s.vm_id, memory=Memory(65536), vcpu=Vcpu(1))
    conn.virconn.defineXML(to_string(plain.build()))  # same uuid and name, no metadata
    assert conn.drain_events()
    for op in (conn.start, conn.destroy, conn.undefine):
        with pytest.raises(FailedPrecondition, match="foreign"):
            op(s.vm_id)
    defined = [e.vm_id for e in events if e.reason == "defined"]
    assert defined == [None]  # theirs, read back (ours is not reported)


def test_a_domain_undefined_and_replaced_behind_our_back_is_foreign(
    conn: LibvirtConnection,
) -> None:
    s = spec()
    conn.define(s)
    conn.start(s.vm_id)  # its handle is kept now
    raw = conn.virconn.lookupByUUIDString(s.vm_id)
    raw.destroy()
    raw.undefine()
    plain = Domain(type="test", name="other", uuid=s.vm_id, memory=Memory(65536), vcpu=Vcpu(1))
    conn.virconn.defineXML(to_string(plain.build()))
    assert conn.drain_events()
    with pytest.raises(FailedPrecondition, match="foreign"):
        conn.start(s.vm_id)


def test_kept_domain_handles_are_dropped_with_the_connection(conn: LibvirtConnection) -> None:
    s = spec()
    conn.define(s)
    conn.reconnect()  # a fresh private test host: the domain is not there
    with pytest.raises(NotFound):
        conn.start(s.vm_id)
