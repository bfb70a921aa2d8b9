"""`vmmgr`: every implemented RPC as a subcommand. Tables by default, `-o json` for scripts."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from vmmgr.cli import admin as admin_cmds
from vmmgr.cli import config as client_config
from vmmgr.cli import output as out
from vmmgr.cli.completion import bash_completion
from vmmgr.v1 import (
    admin_pb2_grpc,
    device_pb2,
    device_pb2_grpc,
    event_pb2,
    event_pb2_grpc,
    host_pb2,
    host_pb2_grpc,
    image_pb2,
    image_pb2_grpc,
    operation_pb2,
    operation_pb2_grpc,
    policy_pb2,
    policy_pb2_grpc,
    vm_pb2,
    vm_pb2_grpc,
)

DEFAULT_ENDPOINT = "127.0.0.1:50051"
EXIT_USAGE = 2
EXIT_RPC = 1


class Client:
    """Stubs over one channel."""

    def __init__(
        self, endpoint: str, timeout: float, settings: client_config.ClientConfig | None = None
    ) -> None:
        # TLS / mTLS and the bearer token come from the client settings (vmmgr/cli/config.py)
        cfg = settings or client_config.ClientConfig()
        self.channel = client_config.make_channel(dataclasses.replace(cfg, endpoint=endpoint))
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)
        self.timeout = timeout
        self.vms = vm_pb2_grpc.VMServiceStub(self.channel)
        self.hosts = host_pb2_grpc.HostServiceStub(self.channel)
        self.images = image_pb2_grpc.ImageServiceStub(self.channel)
        self.devices = device_pb2_grpc.DeviceServiceStub(self.channel)
        self.ops = operation_pb2_grpc.OperationServiceStub(self.channel)
        self.events = event_pb2_grpc.EventServiceStub(self.channel)
        self.policies = policy_pb2_grpc.PolicyServiceStub(self.channel)


Handler = Callable[[argparse.Namespace, Client], int]


# ---------------------------------------------------------------- operations


def follow(client: Client, op: operation_pb2.Operation, args: argparse.Namespace) -> int:
    """Wait for an operation, drawing a progress bar; print its end state."""
    if args.no_wait:
        return show_op(op, args)
    bar = out.ProgressBar()
    final = op
    try:
        for resp in client.ops.WatchOperation(operation_pb2.WatchOperationRequest(id=op.id)):
            final = resp.operation
            if args.output != "json":
                bar.update(
                    final.progress,
                    final.message
                    or out.enum_name(
                        operation_pb2.OperationState.Name(final.state), "OPERATION_STATE_"
                    ),
                )
    except KeyboardInterrupt:
        bar.close()
        sys.stderr.write(f"still running in the background: vmmgr op get {op.id}\n")
        return 130
    bar.close()
    return show_op(final, args)


def show_op(op: operation_pb2.Operation, args: argparse.Namespace) -> int:
    state = out.enum_name(operation_pb2.OperationState.Name(op.state), "OPERATION_STATE_")
    if args.output == "json":
        out.print_json(op)
    else:
        pairs: list[tuple[str, Any]] = [
            ("operation", op.id),
            ("kind", op.kind),
            ("target", op.target),
            ("state", state),
            ("progress", f"{op.progress:.0f}%"),
            ("message", op.message),
        ]
        pairs += [(k, v) for k, v in sorted(op.result.items())]
        if op.error.code:
            pairs.append(("error", f"{op.error.code}: {op.error.message}"))
        out.print_kv(pairs)
    return (
        0
        if op.state
        in (
            operation_pb2.OPERATION_STATE_SUCCEEDED,
            operation_pb2.OPERATION_STATE_PENDING,
            operation_pb2.OPERATION_STATE_RUNNING,
        )
        else EXIT_RPC
    )


def op_list(args: argparse.Namespace, c: Client) -> int:
    resp = c.ops.ListOperations(
        operation_pb2.ListOperationsRequest(
            target=args.target or "", kind=args.kind or "", page_size=args.limit
        ),
        timeout=c.timeout,
    )
    if args.output == "json":
        out.print_json(list(resp.operations))
        return 0
    out.print_table(
        ["ID", "KIND", "TARGET", "STATE", "PROGRESS", "MESSAGE"],
        [
            (
                o.id,
                o.kind,
                o.target,
                out.enum_name(operation_pb2.OperationState.Name(o.state), "OPERATION_STATE_"),
                f"{o.progress:.0f}%",
                o.message,
            )
            for o in resp.operations
        ],
    )
    return 0


def op_get(args: argparse.Namespace, c: Client) -> int:
    return show_op(
        c.ops.GetOperation(
            operation_pb2.GetOperationRequest(id=args.id), timeout=c.timeout
        ).operation,
        args,
    )


def op_wait(args: argparse.Namespace, c: Client) -> int:
    op = c.ops.GetOperation(operation_pb2.GetOperationRequest(id=args.id), timeout=c.timeout)
    return follow(c, op.operation, args)


def op_cancel(args: argparse.Namespace, c: Client) -> int:
    return show_op(
        c.ops.CancelOperation(
            operation_pb2.CancelOperationRequest(id=args.id), timeout=c.timeout
        ).operation,
        args,
    )


# ---------------------------------------------------------------- hosts


def _host_row(h: host_pb2.Host) -> tuple[Any, ...]:
    return (
        h.name,
        out.enum_name(host_pb2.HostState.Name(h.state), "HOST_STATE_"),
        h.uri,
        f"{h.used_vcpus}/{h.cpus}",
        f"{h.used_memory_mib}/{h.memory_mib}",
        h.vm_count,
        ",".join(h.tags),
    )


HOST_HEADERS = ["NAME", "STATE", "URI", "VCPUS", "MEMORY_MIB", "VMS", "TAGS"]


def host_register(args: argparse.Namespace, c: Client) -> int:
    h = c.hosts.RegisterHost(
        host_pb2.RegisterHostRequest(
            name=args.name,
            uri=args.uri,
            tags=args.tag or [],
            pool=args.pool or "",
            agent_address=args.agent or "",
        ),
        timeout=c.timeout,
    ).host
    return _show(args, h, HOST_HEADERS, [_host_row(h)])


def host_list(args: argparse.Namespace, c: Client) -> int:
    hosts = c.hosts.ListHosts(host_pb2.ListHostsRequest(), timeout=c.timeout).hosts
    return _show(args, list(hosts), HOST_HEADERS, [_host_row(h) for h in hosts])


def host_get(args: argparse.Namespace, c: Client) -> int:
    h = c.hosts.GetHost(host_pb2.GetHostRequest(name=args.name), timeout=c.timeout).host
    if args.output == "json":
        out.print_json(h)
        return 0
    out.print_kv(
        [
            ("name", h.name),
            ("state", out.enum_name(host_pb2.HostState.Name(h.state), "HOST_STATE_")),
            ("uri", h.uri),
            ("hostname", h.hostname),
            ("host uuid", h.host_uuid),
            ("arch", h.arch),
            ("cpus", h.cpus),
            ("memory MiB", h.memory_mib),
            (
                "numa cells",
                ", ".join(f"{n.id}: {n.cpus} cpus {n.memory_mib} MiB" for n in h.numa_cells),
            ),
            ("hypervisor", f"{h.hypervisor} {h.hypervisor_version} (libvirt {h.libvirt_version})"),
            ("domain types", ", ".join(h.domain_types)),
            ("used vcpus", h.used_vcpus),
            ("used memory MiB", h.used_memory_mib),
            ("vms", h.vm_count),
            ("tags", ",".join(h.tags)),
            ("pool", h.pool),
            ("agent", h.agent_address or "-"),
            ("error", h.error or "-"),
        ]
    )
    return 0


def host_update(args: argparse.Namespace, c: Client) -> int:
    h = c.hosts.UpdateHost(
        host_pb2.UpdateHostRequest(
            name=args.name,
            tags=args.tag or [],
            update_tags=args.tag is not None,
            pool=args.pool or "",
            agent_address=args.agent or "",
        ),
        timeout=c.timeout,
    ).host
    return _show(args, h, HOST_HEADERS, [_host_row(h)])


def host_remove(args: argparse.Namespace, c: Client) -> int:
    c.hosts.RemoveHost(host_pb2.RemoveHostRequest(name=args.name), timeout=c.timeout)
    print(f"host {args.name} removed")
    return 0


def host_foreign(args: argparse.Namespace, c: Client) -> int:
    doms = c.hosts.ListForeignDomains(
        host_pb2.ListForeignDomainsRequest(host=args.name), timeout=c.timeout
    ).domains
    return _show(
        args, list(doms), ["UUID", "NAME", "STATE"], [(d.uuid, d.name, d.state) for d in doms]
    )


def host_maintenance(args: argparse.Namespace, c: Client) -> int:
    resp = c.hosts.EnterMaintenance(
        host_pb2.EnterMaintenanceRequest(
            name=args.name, dry_run=args.dry_run, stop_blocked=args.stop_blocked
        ),
        timeout=c.timeout,
    )
    if args.output == "json" and args.dry_run:
        out.print_json(list(resp.plan))
        return 0
    out.print_table(
        ["VM", "ACTION", "TARGET", "REASON"],
        [(s.vm_name, s.action, s.target_host, s.reason) for s in resp.plan],
    )
    if resp.operation.id:
        return follow(c, resp.operation, args)
    return 0


def host_activate(args: argparse.Namespace, c: Client) -> int:
    resp = c.hosts.ExitMaintenance(
        host_pb2.ExitMaintenanceRequest(name=args.name, move_back=args.move_back), timeout=c.timeout
    )
    if resp.operation.id:
        return follow(c, resp.operation, args)
    return _show(args, resp.host, HOST_HEADERS, [_host_row(resp.host)])


# ---------------------------------------------------------------- VMs


def _vm_state(v: vm_pb2.VM) -> str:
    return out.enum_name(vm_pb2.VMState.Name(v.state), "VM_STATE_")


def _vm_row(v: vm_pb2.VM) -> tuple[Any, ...]:
    accel = ",".join(d.model or d.mdev_type or d.mig_profile for d in v.devices)
    return (v.spec.name, v.id, v.host, _vm_state(v), v.spec.vcpus, v.spec.memory_mib, accel)


VM_HEADERS = ["NAME", "ID", "HOST", "STATE", "VCPUS", "MEMORY_MIB", "ACCELERATORS"]


def _parse_count(value: str, flag: str) -> tuple[str, int]:
    model, _, count = value.partition(":")
    if count and not count.isdigit():
        raise SystemExit(f"vmmgr: error: {flag} {value!r}: COUNT must be a number")
    return model, int(count or 1)


def _spec_from_args(args: argparse.Namespace) -> vm_pb2.VMSpec:
    spec = vm_pb2.VMSpec(
        name=args.name,
        description=args.description or "",
        vcpus=args.vcpus,
        memory_mib=args.memory,
        vgpu_type=args.vgpu or "",
        mig_profile=args.mig or "",
        groups=args.group or [],
        ha=args.ha,
        ha_priority=args.ha_priority,
        host=args.host or "",
        required_host_tags=args.host_tag or [],
        start=not getattr(args, "no_start", False),
        project=args.project,
        domain_type=args.domain_type or "",
        watchdog=args.watchdog or "",
    )
    spec.disks.append(vm_pb2.DiskSpec(image=args.image, size_gib=args.disk_gib))
    for net in args.network or []:
        name, _, mac = net.partition(",mac=")
        spec.networks.append(vm_pb2.NetworkSpec(network=name, mac=mac))
    for gpu in args.gpu or []:
        model, count = _parse_count(gpu, "--gpu")
        spec.gpus.append(vm_pb2.GpuRequest(model=model, count=count))
    for fpga in args.fpga or []:
        model, count = _parse_count(fpga, "--fpga")
        spec.fpgas.append(
            vm_pb2.FpgaRequest(model=model, count=count, profile=args.fpga_profile or "")
        )
    for label in args.label or []:
        key, sep, value = label.partition("=")
        if not sep:
            raise SystemExit(f"vmmgr: error: --label {label!r}: expected KEY=VALUE")
        spec.labels[key] = value
    if args.user_data or args.ssh_key:
        user_data = ""
        if args.user_data:
            with open(args.user_data, encoding="utf-8") as fh:
                user_data = fh.read()
        keys = []
        for path in args.ssh_key or []:
            with open(path, encoding="utf-8") as fh:
                keys.append(fh.read().strip())
        spec.cloud_init.CopyFrom(vm_pb2.CloudInit(user_data=user_data, ssh_authorized_keys=keys))
    return spec


def vm_create(args: argparse.Namespace, c: Client) -> int:
    resp = c.vms.CreateVM(vm_pb2.CreateVMRequest(spec=_spec_from_args(args)), timeout=c.timeout)
    return follow(c, resp.operation, args)


def vm_explain(args: argparse.Namespace, c: Client) -> int:
    resp = c.vms.ExplainPlacement(
        vm_pb2.ExplainPlacementRequest(spec=_spec_from_args(args)), timeout=c.timeout
    )
    if args.output == "json":
        out.print_json(resp)
        return 0
    print(f"hosts considered: {resp.hosts_considered}; chosen: {resp.chosen_host or 'none'}")
    if resp.ranking:
        out.print_table(
            ["HOST", "SCORE", "WEIGHERS", "DEVICES"],
            [
                (
                    r.host,
                    f"{r.score:.3f}",
                    " ".join(f"{w.weigher}={w.score:.2f}" for w in r.weighers),
                    ",".join(r.devices),
                )
                for r in resp.ranking
            ],
        )
    if resp.rejections:
        print()
        out.print_table(
            ["FILTER", "REJECTED", "WHY (SAMPLES)"],
            [(r.filter, r.hosts_rejected, "; ".join(r.samples)) for r in resp.rejections],
        )
    return 0 if resp.chosen_host else EXIT_RPC


def vm_list(args: argparse.Namespace, c: Client) -> int:
    state = (
        vm_pb2.VMState.Value("VM_STATE_" + args.state.upper())
        if args.state
        else vm_pb2.VM_STATE_UNSPECIFIED
    )
    req = vm_pb2.ListVMsRequest(
        host=args.host or "",
        state=state,
        project=args.project or "",
        label_selector=args.label or [],
        page_size=args.limit,
    )
    vms: list[vm_pb2.VM] = []
    while True:
        resp = c.vms.ListVMs(req, timeout=c.timeout)
        vms.extend(resp.vms)
        if not resp.next_page_token or not args.all:
            break
        req.page_token = resp.next_page_token
    return _show(args, vms, VM_HEADERS, [_vm_row(v) for v in vms])


def vm_get(args: argparse.Namespace, c: Client) -> int:
    v = c.vms.GetVM(vm_pb2.GetVMRequest(vm=args.vm, project=args.project), timeout=c.timeout).vm
    if args.output == "json":
        out.print_json(v)
        return 0
    out.print_kv(
        [
            ("name", v.spec.name),
            ("id", v.id),
            ("host", v.host),
            ("state", _vm_state(v)),
            ("reason", v.state_reason or "-"),
            ("vcpus", v.spec.vcpus),
            ("memory MiB", v.spec.memory_mib),
            ("image", ",".join(d.image for d in v.spec.disks)),
            ("description", v.spec.description or "-"),
            ("devices", ", ".join(f"{d.kind}:{d.device_id}" for d in v.devices) or "-"),
            ("volumes", ", ".join(v.volumes) or "-"),
            ("labels", ",".join(f"{k}={val}" for k, val in sorted(v.spec.labels.items())) or "-"),
        ]
    )
    return 0


def _vm_action(rpc_name: str, request_type: Any, **extra: Any) -> Handler:
    def run(args: argparse.Namespace, c: Client) -> int:
        fields = {k: getattr(args, k) for k in extra}
        resp = getattr(c.vms, rpc_name)(
            request_type(vm=args.vm, project=args.project, **fields), timeout=c.timeout
        )
        return _show(args, resp.vm, VM_HEADERS, [_vm_row(resp.vm)])

    return run


def vm_stop(args: argparse.Namespace, c: Client) -> int:
    resp = c.vms.StopVM(
        vm_pb2.StopVMRequest(
            vm=args.vm, project=args.project, timeout_seconds=args.timeout, force=args.force
        ),
        timeout=max(c.timeout, args.timeout + 30),
    )
    if resp.forced and args.output != "json" and not args.force:
        sys.stderr.write("guest did not shut down in time: forced off\n")
    return _show(args, resp.vm, VM_HEADERS, [_vm_row(resp.vm)])


def vm_delete(args: argparse.Namespace, c: Client) -> int:
    resp = c.vms.DeleteVM(
        vm_pb2.DeleteVMRequest(vm=args.vm, project=args.project), timeout=c.timeout
    )
    return follow(c, resp.operation, args)


def vm_migrate(args: argparse.Namespace, c: Client) -> int:
    mode = vm_pb2.MIGRATION_MODE_COLD if args.cold else vm_pb2.MIGRATION_MODE_LIVE
    resp = c.vms.MigrateVM(
        vm_pb2.MigrateVMRequest(
            vm=args.vm,
            project=args.project,
            target_host=args.to or "",
            mode=mode,
            max_downtime_ms=args.max_downtime_ms,
            bandwidth_mib_s=args.bandwidth,
            auto_converge=args.auto_converge,
            allow_post_copy=args.post_copy,
            copy_storage=args.copy_storage,
        ),
        timeout=c.timeout,
    )
    return follow(c, resp.operation, args)


def vm_migratability(args: argparse.Namespace, c: Client) -> int:
    resp = c.vms.GetMigratability(
        vm_pb2.GetMigratabilityRequest(vm=args.vm, project=args.project), timeout=c.timeout
    )
    if args.output == "json":
        out.print_json(resp)
    else:
        mode = out.enum_name(vm_pb2.MigrationMode.Name(resp.mode), "MIGRATION_MODE_")
        print(f"{mode}: {resp.reason}" if resp.reason else mode)
    return 0


def group_create(args: argparse.Namespace, c: Client) -> int:
    g = c.vms.CreatePlacementGroup(
        vm_pb2.CreatePlacementGroupRequest(
            group=vm_pb2.PlacementGroup(name=args.name, policy=args.policy, hard=not args.soft)
        ),
        timeout=c.timeout,
    ).group
    return _show(args, g, ["NAME", "POLICY", "HARD"], [(g.name, g.policy, g.hard)])


def group_list(args: argparse.Namespace, c: Client) -> int:
    gs = c.vms.ListPlacementGroups(vm_pb2.ListPlacementGroupsRequest(), timeout=c.timeout).groups
    return _show(
        args,
        list(gs),
        ["NAME", "POLICY", "HARD", "MEMBERS"],
        [(g.name, g.policy, g.hard, len(g.members)) for g in gs],
    )


def group_delete(args: argparse.Namespace, c: Client) -> int:
    c.vms.DeletePlacementGroup(
        vm_pb2.DeletePlacementGroupRequest(name=args.name), timeout=c.timeout
    )
    print(f"group {args.name} deleted")
    return 0


# ---------------------------------------------------------------- images


def _img_row(i: image_pb2.Image) -> tuple[Any, ...]:
    return (
        i.name,
        i.format,
        i.size_bytes,
        i.virtual_size_bytes,
        i.sha256[:12],
        ",".join(r.host for r in i.replicas),
    )


IMG_HEADERS = ["NAME", "FORMAT", "SIZE", "VIRTUAL_SIZE", "SHA256", "HOSTS"]


def image_import(args: argparse.Namespace, c: Client) -> int:
    resp = c.images.ImportImage(
        image_pb2.ImportImageRequest(
            name=args.name, source_path=os.path.abspath(args.path), sha256=args.sha256 or ""
        ),
        timeout=c.timeout,
    )
    return follow(c, resp.operation, args)


def image_list(args: argparse.Namespace, c: Client) -> int:
    imgs = c.images.ListImages(image_pb2.ListImagesRequest(), timeout=c.timeout).images
    return _show(args, list(imgs), IMG_HEADERS, [_img_row(i) for i in imgs])


def image_get(args: argparse.Namespace, c: Client) -> int:
    i = c.images.GetImage(image_pb2.GetImageRequest(name=args.name), timeout=c.timeout).image
    return _show(args, i, IMG_HEADERS, [_img_row(i)])


def image_delete(args: argparse.Namespace, c: Client) -> int:
    c.images.DeleteImage(image_pb2.DeleteImageRequest(name=args.name), timeout=c.timeout)
    print(f"image {args.name} deleted")
    return 0


# ---------------------------------------------------------------- devices


def _dev_row(d: device_pb2.Device) -> tuple[Any, ...]:
    t = d.telemetry
    util = f"{t.gpu_utilization:.0f}%" if t.HasField("gpu_utilization") else "-"
    temp = f"{t.temperature_c:.0f}C" if t.HasField("temperature_c") else "-"
    return (
        d.id,
        out.enum_name(device_pb2.DeviceKind.Name(d.kind), "DEVICE_KIND_"),
        d.model,
        f"{d.vendor_id}:{d.product_id}",
        d.numa_node if d.HasField("numa_node") else "-",
        d.iommu_group if d.HasField("iommu_group") else "-",
        out.enum_name(device_pb2.DeviceHealth.Name(d.health), "DEVICE_HEALTH_"),
        d.claimed_by or "-",
        util,
        temp,
    )


DEV_HEADERS = [
    "ID",
    "KIND",
    "MODEL",
    "IDS",
    "NUMA",
    "IOMMU",
    "HEALTH",
    "CLAIMED_BY",
    "UTIL",
    "TEMP",
]


def device_list(args: argparse.Namespace, c: Client) -> int:
    kind = (
        device_pb2.DeviceKind.Value("DEVICE_KIND_" + args.kind.upper())
        if args.kind
        else device_pb2.DEVICE_KIND_UNSPECIFIED
    )
    devs = c.devices.ListDevices(
        device_pb2.ListDevicesRequest(host=args.host or "", kind=kind), timeout=c.timeout
    ).devices
    return _show(args, list(devs), DEV_HEADERS, [_dev_row(d) for d in devs])


def device_get(args: argparse.Namespace, c: Client) -> int:
    d = c.devices.GetDevice(device_pb2.GetDeviceRequest(id=args.id), timeout=c.timeout).device
    if args.output == "json":
        out.print_json(d)
        return 0
    out.print_kv(
        [(k, v) for k, v in out.to_dict(d).items() if not isinstance(v, (dict, list))]
        + [
            ("health reasons", "; ".join(d.health_reasons) or "-"),
            (
                "mdev types",
                ", ".join(f"{m.name}({m.available_instances})" for m in d.mdev_types) or "-",
            ),
            ("telemetry", out.to_dict(d.telemetry) or "-"),
        ]
    )
    return 0


def device_telemetry(args: argparse.Namespace, c: Client) -> int:
    samples = c.devices.GetDeviceTelemetry(
        device_pb2.GetDeviceTelemetryRequest(id=args.id, limit=args.limit), timeout=c.timeout
    ).samples
    return _show(
        args,
        list(samples),
        ["TIME", "GPU_UTIL", "MEM_UTIL", "MEM_USED_MIB", "TEMP_C", "POWER_W"],
        [
            (
                s.time.ToJsonString(),
                *(
                    getattr(s, f) if s.HasField(f) else "-"
                    for f in (
                        "gpu_utilization",
                        "memory_utilization",
                        "memory_used_mib",
                        "temperature_c",
                        "power_w",
                    )
                ),
            )
            for s in samples
        ],
    )


def device_taint(args: argparse.Namespace, c: Client) -> int:
    health = device_pb2.DEVICE_HEALTH_HEALTHY if args.clear else device_pb2.DEVICE_HEALTH_TAINTED
    d = c.devices.SetDeviceHealth(
        device_pb2.SetDeviceHealthRequest(id=args.id, health=health, reason=args.reason or ""),
        timeout=c.timeout,
    ).device
    return _show(args, d, DEV_HEADERS, [_dev_row(d)])


def device_rescan(args: argparse.Namespace, c: Client) -> int:
    devs = c.devices.RescanDevices(
        device_pb2.RescanDevicesRequest(host=args.host), timeout=c.timeout
    ).devices
    return _show(args, list(devs), DEV_HEADERS, [_dev_row(d) for d in devs])


# ---------------------------------------------------------------- events & policies


def _event_row(e: event_pb2.Event) -> tuple[Any, ...]:
    return (
        e.seq,
        e.time.ToJsonString(),
        e.kind,
        e.resource,
        out.enum_name(event_pb2.Severity.Name(e.severity), "SEVERITY_"),
        e.message,
    )


EVENT_HEADERS = ["SEQ", "TIME", "KIND", "RESOURCE", "SEVERITY", "MESSAGE"]


def events_list(args: argparse.Namespace, c: Client) -> int:
    evs = c.events.ListEvents(
        event_pb2.ListEventsRequest(
            kinds=args.kind or [], resource=args.resource or "", limit=args.limit
        ),
        timeout=c.timeout,
    )
    return _show(args, list(evs.events), EVENT_HEADERS, [_event_row(e) for e in evs.events])


def events_watch(args: argparse.Namespace, c: Client) -> int:
    try:
        for resp in c.events.WatchEvents(
            event_pb2.WatchEventsRequest(kinds=args.kind or [], resource=args.resource or "")
        ):
            if args.output == "json":
                out.print_json(resp.event)
            else:
                print("  ".join(str(x) for x in _event_row(resp.event)), flush=True)
    except KeyboardInterrupt:
        return 0
    return 0


def _policy_row(p: policy_pb2.Policy) -> tuple[Any, ...]:
    return (
        p.name,
        p.enabled,
        f"{p.interval_seconds:g}s",
        p.last_run.ToJsonString() if p.HasField("last_run") else "-",
        p.last_result,
    )


def policy_list(args: argparse.Namespace, c: Client) -> int:
    ps = c.policies.ListPolicies(policy_pb2.ListPoliciesRequest(), timeout=c.timeout).policies
    return _show(
        args,
        list(ps),
        ["NAME", "ENABLED", "INTERVAL", "LAST_RUN", "LAST_RESULT"],
        [_policy_row(p) for p in ps],
    )


def policy_plan(args: argparse.Namespace, c: Client) -> int:
    resp = c.policies.PlanPolicy(policy_pb2.PlanPolicyRequest(name=args.name), timeout=c.timeout)
    if args.output == "json":
        out.print_json(resp)
        return 0
    print(f"score {resp.score_before:.4f} -> {resp.score_after:.4f}  {resp.summary}")
    out.print_table(
        ["GROUP", "ACTION", "VM", "FROM", "TO", "REASON"],
        [
            (a.group, a.action, a.vm_id, a.source_host, a.target_host, a.reason)
            for a in resp.actions
        ],
    )
    return 0


def policy_run(args: argparse.Namespace, c: Client) -> int:
    resp = c.policies.RunPolicy(policy_pb2.RunPolicyRequest(name=args.name), timeout=c.timeout)
    return follow(c, resp.operation, args)


def policy_set(args: argparse.Namespace, c: Client) -> int:
    req = policy_pb2.UpdatePolicyRequest(name=args.name)
    if args.enable is not None:
        req.enabled = args.enable
    if args.interval is not None:
        req.interval_seconds = args.interval
    for kv in args.param or []:
        key, _, value = kv.partition("=")
        req.params[key] = value
    p = c.policies.UpdatePolicy(req, timeout=c.timeout).policy
    return _show(
        args, p, ["NAME", "ENABLED", "INTERVAL", "LAST_RUN", "LAST_RESULT"], [_policy_row(p)]
    )


SCALE_HEADERS = ["NAME", "TEMPLATE", "MIN", "MAX", "TARGET", "METRIC", "MEMBERS"]


def _scale_row(g: policy_pb2.ScaleGroup) -> tuple[Any, ...]:
    return (
        g.name,
        g.template_vm_name,
        g.min_size,
        g.max_size,
        f"{g.target:g}",
        g.metric,
        len(g.members),
    )


def scale_create(args: argparse.Namespace, c: Client) -> int:
    g = c.policies.CreateScaleGroup(
        policy_pb2.CreateScaleGroupRequest(
            group=policy_pb2.ScaleGroup(
                name=args.name,
                template_vm_name=args.template,
                min_size=args.min,
                max_size=args.max,
                target=args.target,
                metric=args.metric,
                cooldown_seconds=args.cooldown,
            )
        ),
        timeout=c.timeout,
    ).group
    return _show(args, g, SCALE_HEADERS, [_scale_row(g)])


def scale_list(args: argparse.Namespace, c: Client) -> int:
    gs = c.policies.ListScaleGroups(policy_pb2.ListScaleGroupsRequest(), timeout=c.timeout).groups
    return _show(args, list(gs), SCALE_HEADERS, [_scale_row(g) for g in gs])


def scale_get(args: argparse.Namespace, c: Client) -> int:
    g = c.policies.GetScaleGroup(
        policy_pb2.GetScaleGroupRequest(name=args.name), timeout=c.timeout
    ).group
    return _show(args, g, SCALE_HEADERS, [_scale_row(g)])


def scale_set(args: argparse.Namespace, c: Client) -> int:
    req = policy_pb2.UpdateScaleGroupRequest(name=args.name)
    if args.min is not None:
        req.min_size = args.min
    if args.max is not None:
        req.max_size = args.max
    if args.target is not None:
        req.target = args.target
    g = c.policies.UpdateScaleGroup(req, timeout=c.timeout).group
    return _show(args, g, SCALE_HEADERS, [_scale_row(g)])


def scale_delete(args: argparse.Namespace, c: Client) -> int:
    c.policies.DeleteScaleGroup(
        policy_pb2.DeleteScaleGroupRequest(name=args.name), timeout=c.timeout
    )
    print(f"scaling group {args.name} deleted")
    return 0


# ---------------------------------------------------------------- plumbing


def _show(
    args: argparse.Namespace, obj: Any, headers: Sequence[str], rows: Sequence[Sequence[Any]]
) -> int:
    if args.output == "json":
        out.print_json(obj)
    else:
        out.print_table(headers, rows)
    return 0


def _completion(args: argparse.Namespace, _: Client) -> int:
    print(bash_completion(build_parser()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vmmgr", description="Manage VMs, hosts, images and accelerators through vmmgrd."
    )
    p.add_argument(
        "--endpoint",
        help=f"host:port or a unix socket path (env VMMGR_ENDPOINT; default {DEFAULT_ENDPOINT})",
    )
    # client settings (vmmgr/cli/config.py): flags > env VMMGR_* > the config file
    p.add_argument(
        "--config",
        type=Path,
        help="client config file (default $VMMGR_CONFIG or ~/.config/vmmgr/config.toml)",
    )
    p.add_argument("--token", help="bearer token (prefer env VMMGR_TOKEN or the config file)")
    p.add_argument("--ca", help="CA certificate of vmmgrd (turns TLS on)")
    p.add_argument("--cert", help="client certificate (mTLS)")
    p.add_argument("--key", help="client key (mTLS)")
    p.add_argument("--server-name", help="TLS server name to verify")
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")
    p.add_argument("--timeout", type=float, default=60.0, help="per-call deadline in seconds")
    p.add_argument("--no-wait", action="store_true", help="return an operation id at once")
    top = p.add_subparsers(dest="group", required=True, metavar="COMMAND")

    def cmd(sub: Any, name: str, fn: Handler, help_: str) -> argparse.ArgumentParser:
        sp: argparse.ArgumentParser = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(fn=fn)
        return sp

    # host
    hp = top.add_parser("host", help="hypervisor hosts").add_subparsers(dest="cmd", required=True)
    sp = cmd(hp, "register", host_register, "register a libvirt host by URI")
    sp.add_argument("name")
    sp.add_argument("uri", help="qemu:///system, qemu+ssh://user@host/system, test:///node.xml")
    sp.add_argument("--tag", action="append")
    sp.add_argument("--pool")
    sp.add_argument("--agent", help="host agent address host:port")
    cmd(hp, "list", host_list, "list hosts")
    cmd(hp, "get", host_get, "show one host").add_argument("name")
    sp = cmd(hp, "update", host_update, "change tags, pool or agent")
    sp.add_argument("name")
    sp.add_argument("--tag", action="append")
    sp.add_argument("--pool")
    sp.add_argument("--agent")
    cmd(hp, "remove", host_remove, "forget a host without VMs").add_argument("name")
    cmd(hp, "foreign", host_foreign, "domains vmmgr does not manage").add_argument("name")
    sp = cmd(hp, "maintenance", host_maintenance, "evacuate a host into maintenance")
    sp.add_argument("name")
    sp.add_argument("--dry-run", action="store_true")
    sp.add_argument("--stop-blocked", action="store_true")
    sp = cmd(hp, "activate", host_activate, "end maintenance")
    sp.add_argument("name")
    sp.add_argument("--move-back", action="store_true")

    # vm
    vp = top.add_parser("vm", help="virtual machines").add_subparsers(dest="cmd", required=True)

    def spec_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("name")
        sp.add_argument("--image", required=True)
        sp.add_argument("--vcpus", type=int, default=1)
        sp.add_argument("--memory", type=int, default=256, help="MiB")
        sp.add_argument("--disk-gib", type=int, default=0, help="0 = the image's size")
        sp.add_argument("--description")
        sp.add_argument("--network", action="append", help="NAME[,mac=MAC]; repeatable")
        sp.add_argument("--gpu", action="append", help="MODEL[:COUNT]")
        sp.add_argument("--vgpu", help="vGPU (mdev) type")
        sp.add_argument("--mig", help="MIG profile, e.g. 1g.10gb")
        sp.add_argument("--fpga", action="append", help="MODEL[:COUNT]")
        sp.add_argument("--fpga-profile")
        sp.add_argument("--group", action="append")
        sp.add_argument("--label", action="append", help="KEY=VALUE")
        sp.add_argument("--ha", action="store_true")
        sp.add_argument("--ha-priority", type=int, default=0)
        sp.add_argument("--host")
        sp.add_argument("--host-tag", action="append")
        sp.add_argument("--project", default="default")
        sp.add_argument("--domain-type", choices=["kvm", "qemu"])
        sp.add_argument("--watchdog", choices=["reset", "poweroff", "shutdown", "pause"])
        sp.add_argument("--user-data", help="cloud-init user-data file")
        sp.add_argument("--ssh-key", action="append", help="public key file")

    sp = cmd(vp, "create", vm_create, "create (and start) a VM")
    spec_args(sp)
    sp.add_argument("--no-start", action="store_true")
    spec_args(cmd(vp, "explain", vm_explain, "dry-run placement: ranking and rejections"))
    sp = cmd(vp, "list", vm_list, "list VMs")
    sp.add_argument("--host")
    sp.add_argument("--state")
    sp.add_argument("--project")
    sp.add_argument("--label", action="append", help="KEY=VALUE selector")
    sp.add_argument("--limit", type=int, default=100)
    sp.add_argument("--all", action="store_true", help="follow pages")
    for name, fn, help_ in (
        ("get", vm_get, "show one VM"),
        ("start", _vm_action("StartVM", vm_pb2.StartVMRequest), "start a VM"),
        ("reboot", _vm_action("RebootVM", vm_pb2.RebootVMRequest), "reboot a VM"),
        ("suspend", _vm_action("SuspendVM", vm_pb2.SuspendVMRequest), "pause a VM"),
        ("resume", _vm_action("ResumeVM", vm_pb2.ResumeVMRequest), "resume a paused VM"),
        ("delete", vm_delete, "delete a VM and its volumes"),
        ("migratability", vm_migratability, "live / cold / blocked and why"),
    ):
        sp = cmd(vp, name, fn, help_)
        sp.add_argument("vm", help="name or id")
        sp.add_argument("--project", default="default")
    sp = cmd(vp, "stop", vm_stop, "graceful shutdown, then force-off after the timeout")
    sp.add_argument("vm")
    sp.add_argument("--project", default="default")
    sp.add_argument("--timeout", type=float, default=60.0)
    sp.add_argument("--force", action="store_true")
    sp = cmd(vp, "migrate", vm_migrate, "live or cold migration")
    sp.add_argument("vm")
    sp.add_argument("--project", default="default")
    sp.add_argument("--to")
    sp.add_argument("--cold", action="store_true")
    sp.add_argument("--max-downtime-ms", type=int, default=0)
    sp.add_argument("--bandwidth", type=int, default=0, help="MiB/s")
    sp.add_argument("--auto-converge", action="store_true")
    sp.add_argument("--post-copy", action="store_true")
    sp.add_argument("--copy-storage", action="store_true")

    gp = top.add_parser("group", help="placement groups").add_subparsers(dest="cmd", required=True)
    sp = cmd(gp, "create", group_create, "create an affinity or anti-affinity group")
    sp.add_argument("name")
    sp.add_argument("--policy", choices=["affinity", "anti-affinity"], default="anti-affinity")
    sp.add_argument("--soft", action="store_true")
    cmd(gp, "list", group_list, "list groups")
    cmd(gp, "delete", group_delete, "delete a group").add_argument("name")

    ip = top.add_parser("image", help="images").add_subparsers(dest="cmd", required=True)
    sp = cmd(ip, "import", image_import, "import a local qcow2/raw file into every host's pool")
    sp.add_argument("name")
    sp.add_argument("path")
    sp.add_argument("--sha256")
    cmd(ip, "list", image_list, "list images")
    cmd(ip, "get", image_get, "show one image").add_argument("name")
    cmd(ip, "delete", image_delete, "delete an unused image").add_argument("name")

    dp = top.add_parser("device", help="GPUs, FPGAs and other PCI devices").add_subparsers(
        dest="cmd", required=True
    )
    sp = cmd(dp, "list", device_list, "device inventory")
    sp.add_argument("--host")
    sp.add_argument("--kind", choices=["gpu", "fpga", "other"])
    cmd(dp, "get", device_get, "one device with health and telemetry").add_argument("id")
    sp = cmd(dp, "telemetry", device_telemetry, "telemetry samples")
    sp.add_argument("id")
    sp.add_argument("--limit", type=int, default=20)
    sp = cmd(dp, "taint", device_taint, "keep the scheduler away from a device")
    sp.add_argument("id")
    sp.add_argument("--reason")
    sp.add_argument("--clear", action="store_true", help="untaint")
    cmd(dp, "rescan", device_rescan, "re-read a host's devices").add_argument("host")

    opp = top.add_parser("op", help="long-running operations").add_subparsers(
        dest="cmd", required=True
    )
    sp = cmd(opp, "list", op_list, "list operations")
    sp.add_argument("--target")
    sp.add_argument("--kind")
    sp.add_argument("--limit", type=int, default=50)
    cmd(opp, "get", op_get, "show one operation").add_argument("id")
    cmd(opp, "wait", op_wait, "wait for an operation with a progress bar").add_argument("id")
    cmd(opp, "cancel", op_cancel, "cancel an operation").add_argument("id")

    ep = top.add_parser("events", help="events").add_subparsers(dest="cmd", required=True)
    for name, fn in (("list", events_list), ("watch", events_watch)):
        sp = cmd(ep, name, fn, f"{name} events")
        sp.add_argument("--kind", action="append")
        sp.add_argument("--resource")
        if name == "list":
            sp.add_argument("--limit", type=int, default=50)

    pp = top.add_parser("policy", help="periodic policies").add_subparsers(
        dest="cmd", required=True
    )
    cmd(pp, "list", policy_list, "list policies")
    cmd(pp, "plan", policy_plan, "dry run: the plan and its score").add_argument("name")
    cmd(pp, "run", policy_run, "run a policy once now").add_argument("name")
    sp = cmd(pp, "set", policy_set, "enable/disable, interval, params")
    sp.add_argument("name")
    sp.add_argument("--enable", action=argparse.BooleanOptionalAction)
    sp.add_argument("--interval", type=float)
    sp.add_argument("--param", action="append", help="KEY=VALUE")

    admin_cmds.add_commands(top)  # token, project, audit, certs (issue 7)

    scp = top.add_parser("scale", help="elastic scaling groups").add_subparsers(
        dest="cmd", required=True
    )
    sp = cmd(scp, "create", scale_create, "a group of VMs shaped like a template VM")
    sp.add_argument("name")
    sp.add_argument("--template", required=True, help="VM whose spec new members copy")
    sp.add_argument("--min", type=int, default=1)
    sp.add_argument("--max", type=int, required=True)
    sp.add_argument("--target", type=float, default=0.7, help="utilisation to aim for, 0..1")
    sp.add_argument("--metric", choices=["cpu", "gpu"], default="cpu")
    sp.add_argument("--cooldown", type=float, default=300.0, help="seconds")
    cmd(scp, "list", scale_list, "list scaling groups")
    cmd(scp, "get", scale_get, "show one scaling group").add_argument("name")
    sp = cmd(scp, "set", scale_set, "change min, max or target")
    sp.add_argument("name")
    sp.add_argument("--min", type=int)
    sp.add_argument("--max", type=int)
    sp.add_argument("--target", type=float)
    cmd(scp, "delete", scale_delete, "delete a scaling group").add_argument("name")

    sp = top.add_parser("completion", help="print a bash completion script")
    sp.add_argument("shell", choices=["bash"])
    sp.set_defaults(fn=_completion, completion=True)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "completion", False) or getattr(args, "local", False):
        return int(args.fn(args, None))
    try:
        settings = client_config.load(
            args.config,
            flags={
                "endpoint": args.endpoint,
                "token": args.token,
                "ca": args.ca,
                "cert": args.cert,
                "key": args.key,
                "server_name": args.server_name,
            },
        )
        args.endpoint = settings.endpoint
        client = Client(settings.endpoint, args.timeout, settings)
    except client_config.ClientConfigError as exc:
        sys.stderr.write(f"vmmgr: {exc}\n")
        return EXIT_USAGE
    try:
        return int(args.fn(args, client))
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        if code == grpc.StatusCode.UNAVAILABLE and "connect" in (details or "").lower():
            sys.stderr.write(
                f"vmmgr: cannot reach vmmgrd at {args.endpoint} "
                "(is it running? `make run` starts it)\n"
            )
        else:
            name = code.name if code is not None else "ERROR"
            sys.stderr.write(f"vmmgr: {name}: {details}\n")
        return EXIT_RPC
    finally:
        client.channel.close()


if __name__ == "__main__":
    sys.exit(main())
