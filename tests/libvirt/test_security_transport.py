"""Transport security (TLS required off-loopback, mTLS, --insecure, unix socket) and the
Prometheus endpoint, on an in-process daemon over the libvirt test driver."""

from __future__ import annotations

import logging
import stat
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from drivers.hypervisor.libvirt import LibvirtConfig, LibvirtHypervisor
from drivers.image_files import LocalImageFiles
from tests.harness import TEST_NODE_XML, make_qcow2, test_config
from vmmgr.api import security
from vmmgr.cli import certs
from vmmgr.cli.config import ClientConfig, make_channel
from vmmgr.config import Config
from vmmgr.daemon import Core, build_core, build_server
from vmmgr.metrics import Metrics
from vmmgr.state import open_store, repo
from vmmgr.state.models import Device, PolicyConfig, Role
from vmmgr.v1 import (
    host_pb2,
    host_pb2_grpc,
    image_pb2,
    image_pb2_grpc,
    operation_pb2,
    operation_pb2_grpc,
    vm_pb2,
    vm_pb2_grpc,
)


@contextmanager
def core_of(config: Config) -> Iterator[Core]:
    hv = LibvirtHypervisor(LibvirtConfig(keepalive_interval_s=2, keepalive_count=3))
    core = build_core(config, hv, LocalImageFiles())
    core.start()
    try:
        yield core
    finally:
        core.stop()


@contextmanager
def served(core: Core, listen: str, metrics: Metrics | None = None) -> Iterator[int]:
    server, port = build_server(core, listen, workers=4, metrics=metrics)
    server.start()
    try:
        yield port
    finally:
        server.stop(grace=1).wait()


def admin_token(core: Core) -> str:
    with core.store.session() as s:
        return repo.create_token(s, "root", "default", Role.ADMIN.value)[1]


def list_hosts(channel: grpc.Channel) -> list[str]:
    hosts = host_pb2_grpc.HostServiceStub(channel).ListHosts(host_pb2.ListHostsRequest(),
                                                            timeout=10)
    return [h.name for h in hosts.hosts]


def test_plaintext_off_loopback_is_refused(tmp_path: Path) -> None:
    with core_of(test_config(tmp_path)) as core, pytest.raises(
        SystemExit, match="refusing to listen on 0.0.0.0:0 without TLS"
    ):
        build_server(core, "0.0.0.0:0")


def test_insecure_allows_it_loudly_and_tokens_are_still_required(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with core_of(test_config(tmp_path, insecure=True)) as core, caplog.at_level(
        logging.WARNING
    ), served(core, "0.0.0.0:0") as port:
        assert "INSECURE: vmmgrd serves plaintext gRPC on 0.0.0.0:0" in caplog.text
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        with pytest.raises(grpc.RpcError) as e:
            list_hosts(channel)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED  # auth auto: on
        token = admin_token(core)
        with make_channel(ClientConfig(endpoint=f"127.0.0.1:{port}", token=token)) as ch:
            assert list_hosts(ch) == []
        channel.close()


def test_mtls_off_loopback(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    certs.init_lab(pki)
    certs.issue_client(pki, "eve-unsigned")  # signed by the CA: fine
    rogue = tmp_path / "rogue"
    certs.init_lab(rogue)  # another CA: its client certificate must not be accepted
    cfg = test_config(tmp_path, tls_cert=str(pki / "server.pem"),
                      tls_key=str(pki / "server-key.pem"), tls_ca=str(pki / "ca.pem"))
    with core_of(cfg) as core, served(core, "0.0.0.0:0") as port:
        token = admin_token(core)
        endpoint = f"127.0.0.1:{port}"
        good = ClientConfig(endpoint=endpoint, ca=str(pki / "ca.pem"),
                            cert=str(pki / "client.pem"), key=str(pki / "client-key.pem"),
                            token=token)
        with make_channel(good) as ch:
            assert list_hosts(ch) == []
        for bad, code in (
            (ClientConfig(endpoint=endpoint, ca=str(pki / "ca.pem"), token=token),
             grpc.StatusCode.UNAVAILABLE),  # no client certificate
            (ClientConfig(endpoint=endpoint, ca=str(pki / "ca.pem"),
                          cert=str(rogue / "client.pem"), key=str(rogue / "client-key.pem"),
                          token=token), grpc.StatusCode.UNAVAILABLE),  # untrusted client CA
            (ClientConfig(endpoint=endpoint, token=token), grpc.StatusCode.UNAVAILABLE),
            (ClientConfig(endpoint=endpoint, ca=str(pki / "ca.pem"),
                          cert=str(pki / "client.pem"), key=str(pki / "client-key.pem")),
             grpc.StatusCode.UNAUTHENTICATED),  # mTLS alone is not a token
        ):
            with make_channel(bad) as ch, pytest.raises(grpc.RpcError) as e:
                list_hosts(ch)
            assert e.value.code() == code, bad


def test_client_certificate_names_the_caller_when_tokens_are_optional(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    certs.init_lab(pki, client_name="alice")
    cfg = test_config(tmp_path, tls_cert=str(pki / "server.pem"),
                      tls_key=str(pki / "server-key.pem"), tls_ca=str(pki / "ca.pem"))
    with core_of(cfg) as core, served(core, "127.0.0.1:0") as port:
        client = ClientConfig(endpoint=f"127.0.0.1:{port}", ca=str(pki / "ca.pem"),
                              cert=str(pki / "client.pem"), key=str(pki / "client-key.pem"))
        with make_channel(client) as ch, pytest.raises(grpc.RpcError):
            host_pb2_grpc.HostServiceStub(ch).RemoveHost(host_pb2.RemoveHostRequest(name="x"))
        with core.store.read_session() as s:
            row = repo.list_audit(s)[-1]
        assert (row.principal, row.method, row.result_code) == (
            "cert:alice", "HostService.RemoveHost", "NOT_FOUND")


def test_unix_socket_only(tmp_path: Path) -> None:
    sock = tmp_path / "run" / "vmmgr.sock"
    with core_of(test_config(tmp_path, unix_socket=str(sock))) as core:
        with served(core, "") as port:
            assert port == 0
            assert stat.S_ISSOCK(sock.stat().st_mode)
            assert stat.S_IMODE(sock.stat().st_mode) == 0o660
            with make_channel(ClientConfig(endpoint=str(sock))) as ch:
                assert list_hosts(ch) == []
        core.config.unix_socket = ""
        with pytest.raises(SystemExit, match="nothing to listen on"):
            build_server(core, "")


# ------------------------------------------------------------------ metrics


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_are_scraped_and_parse(tmp_path: Path) -> None:
    node = tmp_path / "node.xml"
    node.write_text(TEST_NODE_XML)
    image = make_qcow2(tmp_path / "base.qcow2")
    with core_of(test_config(tmp_path)) as core:
        metrics = Metrics(core.store)
        http = security.serve_metrics(Config(metrics_listen="127.0.0.1:0"), metrics)
        assert http is not None
        try:
            with served(core, "127.0.0.1:0", metrics) as port:
                ch = grpc.insecure_channel(f"127.0.0.1:{port}")
                host_pb2_grpc.HostServiceStub(ch).RegisterHost(host_pb2.RegisterHostRequest(
                    name="t1", uri=f"test://{node}"))
                ops = operation_pb2_grpc.OperationServiceStub(ch)
                op = image_pb2_grpc.ImageServiceStub(ch).ImportImage(
                    image_pb2.ImportImageRequest(name="base", source_path=str(image))).operation
                ops.WaitOperation(operation_pb2.WaitOperationRequest(id=op.id,
                                                                     timeout_seconds=60))
                vms = vm_pb2_grpc.VMServiceStub(ch)
                op = vms.CreateVM(vm_pb2.CreateVMRequest(spec=vm_pb2.VMSpec(
                    name="m1", vcpus=2, memory_mib=128,
                    disks=[vm_pb2.DiskSpec(image="base")]))).operation
                ops.WaitOperation(operation_pb2.WaitOperationRequest(id=op.id,
                                                                     timeout_seconds=60))
                for _ in range(3):
                    with pytest.raises(grpc.RpcError):
                        vms.GetVM(vm_pb2.GetVMRequest(vm="missing"))
                with pytest.raises(grpc.RpcError):
                    vms.GetVM(vm_pb2.GetVMRequest(vm="m1"), metadata=(
                        ("authorization", "Bearer vmm_wrong"),))
                ch.close()
            with core.store.session() as s:
                s.add(Device(id="t1/0000:3b:00.0", host="t1", address="0000:3b:00.0",
                             kind="gpu", model="H100-80GB", health="healthy",
                             nvml={"utilization_gpu_pct": 42, "temperature_c": 55,
                                   "memory_used_mib": 1024, "power_mw": 250000,
                                   "memory_total_mib": None}))
                s.add(PolicyConfig(name="balance", enabled=True,
                                   last_result={"actions": [{"vm": "a"}, {"vm": "b"}]}))
            metrics.observe_policy_run("balance", actions=2, seconds=0.5, ok=True)
            m = scrape(f"http://127.0.0.1:{http.port}/metrics")
        finally:
            http.stop()

    def rpc(method: str, code: str) -> float:
        return m[("vmmgr_rpc_requests_total", (("code", code), ("method", method)))]

    assert rpc("/vmmgr.v1.HostService/RegisterHost", "OK") == 1
    assert rpc("/vmmgr.v1.VMService/GetVM", "NOT_FOUND") == 3
    assert rpc("/vmmgr.v1.VMService/GetVM", "UNAUTHENTICATED") == 1
    assert m[("vmmgr_rpc_duration_seconds_count",
              (("method", "/vmmgr.v1.VMService/GetVM"),))] == 4
    assert m[("vmmgr_auth_failures_total", (("code", "UNAUTHENTICATED"),))] == 1
    assert m[("vmmgr_rpc_in_flight", ())] == 0
    assert m[("vmmgr_store_up", ())] == 1
    assert m[("vmmgr_vms", (("state", "running"),))] == 1
    assert m[("vmmgr_vms", (("state", "stopped"),))] == 0
    assert m[("vmmgr_hosts", (("state", "up"),))] == 1
    assert m[("vmmgr_host_up", (("host", "t1"),))] == 1
    assert m[("vmmgr_host_used_vcpus", (("host", "t1"),))] == 2
    assert m[("vmmgr_host_vcpus", (("host", "t1"),))] == 8
    assert m[("vmmgr_operations", (("kind", "vm.create"), ("state", "succeeded")))] == 1
    gpu = (("device", "t1/0000:3b:00.0"), ("host", "t1"), ("kind", "gpu"), ("model", "H100-80GB"))
    assert m[("vmmgr_gpu_utilization_percent", gpu)] == 42
    assert m[("vmmgr_gpu_temperature_celsius", gpu)] == 55
    assert m[("vmmgr_gpu_power_watts", gpu)] == 250
    assert ("vmmgr_gpu_memory_total_mib", gpu) not in m  # NVML said "not supported"
    assert m[("vmmgr_device_health", tuple(sorted((*gpu, ("health", "healthy")))))] == 1
    assert m[("vmmgr_policy_enabled", (("policy", "balance"),))] == 1
    assert m[("vmmgr_policy_last_plan_actions", (("policy", "balance"),))] == 2
    assert m[("vmmgr_policy_runs_total", (("policy", "balance"), ("result", "ok")))] == 1
    assert m[("vmmgr_policy_plan_actions_sum", (("policy", "balance"),))] == 2


def test_a_broken_store_still_answers_the_scrape(tmp_path: Path) -> None:
    store = open_store(None, tmp_path)
    metrics = Metrics(store)
    assert "vmmgr_store_up 1.0" in metrics.render().decode()
    store.engine.dispose()
    (tmp_path / "vmmgr.db").unlink()  # the next connection opens an empty database
    text = metrics.render().decode()
    store.close()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["vmmgr_store_up"].samples[0].value == 0
    assert "vmmgr_vms" not in families and "vmmgr_rpc_requests" in families


def test_metrics_off_loopback_need_tls(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="refusing to serve metrics"):
        security.serve_metrics(Config(metrics_listen="0.0.0.0:0"), Metrics())
    assert security.serve_metrics(Config(metrics_listen=""), Metrics()) is None
