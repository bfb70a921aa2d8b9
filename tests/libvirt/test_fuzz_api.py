"""Fuzzing every RPC of the in-process daemon (libvirt test driver) with generated messages:
no INTERNAL / UNKNOWN status and no crash; hostile text in names, descriptions and labels
never changes the domain XML's structure. bench/fuzz/run.py is the >= 100,000-message run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from tests.harness import TEST_NODE_XML, Daemon, make_qcow2, running_daemon, test_config
from tests.libvirt.fuzz_messages import (
    HOSTILE,
    Fuzzer,
    HypothesisSource,
    RandomSource,
    Tally,
    Vocabulary,
    all_rpcs,
)
from vmmgr.v1 import host_pb2, image_pb2, operation_pb2, vm_pb2

SUCCEEDED = operation_pb2.OPERATION_STATE_SUCCEEDED


def prepared(tmp: Path) -> tuple[Path, Path]:
    node = tmp / "node.xml"
    node.write_text(TEST_NODE_XML)
    return node, make_qcow2(tmp / "base.qcow2")


def setup_daemon(d: Daemon, node: Path, image: Path) -> Vocabulary:
    d.hosts.RegisterHost(host_pb2.RegisterHostRequest(name="t1", uri=f"test://{node}"))
    op = d.images.ImportImage(image_pb2.ImportImageRequest(name="base", source_path=str(image)))
    assert d.wait(op.operation).state == SUCCEEDED
    op = d.vms.CreateVM(vm_pb2.CreateVMRequest(spec=vm_pb2.VMSpec(
        name="vm1", vcpus=1, memory_mib=64, disks=[vm_pb2.DiskSpec(image="base")])))
    done = d.wait(op.operation)
    assert done.state == SUCCEEDED, done.error
    vocab = Vocabulary(node_uris=[f"test://{node}"], image_paths=[str(image)])
    vocab.add_id(done.id)
    vocab.add_id(done.result["vm_id"])
    return vocab


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, Fuzzer]]:
    tmp = tmp_path_factory.mktemp("fuzz")
    node, image = prepared(tmp)
    with running_daemon(test_config(tmp)) as d:
        yield d, Fuzzer(d.channel, setup_daemon(d, node, image))


def alive(d: Daemon) -> None:
    """The daemon still answers a plain call."""
    d.hosts.ListHosts(host_pb2.ListHostsRequest(), timeout=10)


def test_the_fuzzer_knows_every_rpc() -> None:
    paths = {r.path for r in all_rpcs()}
    assert "/vmmgr.v1.VMService/CreateVM" in paths and "/vmmgr.v1.AdminService/CreateToken" in paths
    assert len(paths) > 50


def test_every_rpc_with_empty_and_generated_messages(fuzz: tuple[Daemon, Fuzzer]) -> None:
    d, fz = fuzz
    tally = Tally()
    source = RandomSource(7)
    for rpc in fz.rpcs:
        for _ in range(6):
            fz.one(source, tally, rpc)
    assert tally.sent == 6 * len(fz.rpcs)
    assert not tally.failures, "\n".join(f"{f.method} {f.code}: {f.details}\n{f.request}"
                                         for f in tally.failures)
    # generated requests reach the handlers: not everything is refused at the door
    assert tally.by_code.get("OK", 0) > 0 and tally.by_code.get("INVALID_ARGUMENT", 0) > 0
    alive(d)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_generated_messages_never_fail_internally(fuzz: tuple[Daemon, Fuzzer],
                                                  data: st.DataObject) -> None:
    _, fz = fuzz
    tally = Tally()
    fz.one(HypothesisSource(data), tally)
    assert not tally.failures, tally.failures


def test_malformed_bytes_are_invalid_argument(fuzz: tuple[Daemon, Fuzzer]) -> None:
    d, _ = fuzz
    call = d.channel.unary_unary("/vmmgr.v1.VMService/GetVM", request_serializer=None,
                                 response_deserializer=vm_pb2.GetVMResponse.FromString)
    with pytest.raises(grpc.RpcError) as e:
        call(b"\xff\xff\xff\xff", timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "could not be parsed" in e.value.details()


# ------------------------------------------------------------------ hostile text vs domain XML


def skeleton(xml: str) -> list[tuple[str, tuple[str, ...]]]:
    """The shape of a domain: element paths and attribute names, no values."""
    root = etree.fromstring(xml.encode())
    tree = root.getroottree()
    return [(tree.getpath(el), tuple(sorted(el.attrib))) for el in root.iter()
            if isinstance(el.tag, str) and el.tag != "description"]


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    node, image = prepared(tmp_path)
    with running_daemon(test_config(tmp_path)) as d:
        setup_daemon(d, node, image)
        yield d


def test_hostile_strings_never_change_the_domain_xml(daemon: Daemon) -> None:
    conn = daemon.core.conns.get("t1")

    def create(name: str, text: str) -> tuple[str, str]:
        """(outcome, domain XML or error): outcome is "defined" or a refusal code."""
        spec = vm_pb2.VMSpec(name=name, description=text, vcpus=1, memory_mib=64, start=False,
                             disks=[vm_pb2.DiskSpec(image="base")], labels={"note": text[:256]})
        try:
            op = daemon.vms.CreateVM(vm_pb2.CreateVMRequest(spec=spec), timeout=30).operation
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, (text, exc.details())
            return "INVALID_ARGUMENT", exc.details()
        done = daemon.wait(op)
        if done.state != SUCCEEDED:
            assert done.error.code == "INVALID_ARGUMENT", (text, done.error)
            return "INVALID_ARGUMENT", done.error.message
        xml = conn.domain_xml(done.result["vm_id"])
        gone = daemon.vms.DeleteVM(vm_pb2.DeleteVMRequest(vm=done.result["vm_id"]))
        assert daemon.wait(gone.operation).state == SUCCEEDED
        return "defined", xml

    outcome, base_xml = create("baseline", "plain words")
    assert outcome == "defined"
    base = skeleton(base_xml)
    defined = refused = 0
    for i, text in enumerate(HOSTILE):
        outcome, xml = create(f"h{i}", text)
        if outcome != "defined":
            refused += 1
            continue
        defined += 1
        assert skeleton(xml) == base, f"domain structure changed by {text[:60]!r}"
        root = etree.fromstring(xml.encode())
        # the description round-trips (an empty one is left out; XML turns CR into LF)
        want = text.replace("\r\n", "\n").replace("\r", "\n")
        assert root.findtext("description", default="") == want, text[:60]
        # the text shows up only where it was put: the description and the label value
        for el in root.iter():
            if not isinstance(el.tag, str) or not text.strip() or len(text) < 4:
                continue
            for value in el.attrib.values():
                assert text not in value or el.tag.endswith("label"), (el.tag, text[:60])
    assert defined > len(HOSTILE) // 2 and refused > 0, (defined, refused)
