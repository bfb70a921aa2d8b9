"""Prometheus metrics: RPC counters and latencies (fed by the API interceptor), policy runs
(fed by whoever runs policies), and gauges read from the store at scrape time.

Each daemon owns a private registry (tests run several daemons in one process); the store
gauges are computed only when someone scrapes, so they cost nothing between scrapes.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector
from sqlalchemy import and_, func
from sqlmodel import col, select

from vmmgr.state import Store
from vmmgr.state.models import (
    VM,
    Device,
    Host,
    HostSample,
    Operation,
    PolicyConfig,
    Project,
    VMState,
)

log = logging.getLogger(__name__)

RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
PLAN_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 250, 1000)

# NVML facts stored in Device.nvml -> (metric, help)
GPU_GAUGES: dict[str, tuple[str, str]] = {
    "utilization_gpu_pct": ("vmmgr_gpu_utilization_percent", "GPU utilisation (NVML)"),
    "utilization_memory_pct": ("vmmgr_gpu_memory_utilization_percent",
                               "GPU memory controller utilisation (NVML)"),
    "memory_used_mib": ("vmmgr_gpu_memory_used_mib", "GPU framebuffer memory in use"),
    "memory_total_mib": ("vmmgr_gpu_memory_total_mib", "GPU framebuffer memory"),
    "temperature_c": ("vmmgr_gpu_temperature_celsius", "GPU temperature"),
    "power_mw": ("vmmgr_gpu_power_watts", "GPU power draw"),
}


class StoreCollector(Collector):
    """Gauges computed from the store when scraped: VMs, hosts, devices, operations, policies,
    project quotas. A store failure yields ``vmmgr_store_up 0`` instead of a failed scrape."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("vmmgr_store_up", "1 when the store answered this scrape")
        try:
            families = self._families()
        except Exception:  # noqa: BLE001 - a scrape must answer even when the store does not
            log.exception("metrics: reading the store failed")
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self) -> list[Metric]:
        out: list[Metric] = []
        with self.store.read_session() as s:
            by_state = dict(s.exec(select(VM.state, func.count()).group_by(VM.state)).all())
            vms = GaugeMetricFamily("vmmgr_vms", "VMs by observed state", labels=["state"])
            for known in VMState:
                vms.add_metric([known.value], by_state.pop(known.value, 0))
            for other, n in by_state.items():
                vms.add_metric([str(other)], n)
            out.append(vms)

            used: dict[str, tuple[int, int, int]] = {
                str(h): (n, c, m) for h, n, c, m in s.exec(
                    select(VM.host, func.count(), func.coalesce(func.sum(VM.vcpus), 0),
                           func.coalesce(func.sum(VM.memory_mib), 0))
                    .where(col(VM.host).is_not(None)).group_by(VM.host)).all()
            }
            out += self._hosts(list(s.exec(select(Host))), used, self._host_cpu(s))
            out += self._devices(list(s.exec(select(Device).where(col(Device.present)))))

            ops = GaugeMetricFamily("vmmgr_operations", "Operations in the store by kind and "
                                    "state", labels=["kind", "state"])
            migrations = GaugeMetricFamily("vmmgr_migrations", "Migration operations in the "
                                           "store by kind and state", labels=["kind", "state"])
            for kind, state, n in s.exec(select(Operation.kind, Operation.state, func.count())
                                         .group_by(Operation.kind, Operation.state)).all():
                ops.add_metric([kind, state], n)
                if "migrat" in kind:
                    migrations.add_metric([kind, state], n)
            out += [ops, migrations]

            out += self._policies(list(s.exec(select(PolicyConfig))))
            out += self._projects(s, list(s.exec(select(Project))))
        return out

    @staticmethod
    def _host_cpu(s: Any) -> dict[str, float]:
        latest = (select(HostSample.host, func.max(HostSample.time).label("t"))
                  .group_by(HostSample.host).subquery())
        rows = s.exec(select(HostSample.host, HostSample.cpu_util).join(
            latest, and_(col(HostSample.host) == latest.c.host,
                         col(HostSample.time) == latest.c.t)))
        return {h: u for h, u in rows.all() if u is not None}

    @staticmethod
    def _hosts(hosts: list[Host], used: dict[str, tuple[int, int, int]],
               cpu: dict[str, float]) -> list[Metric]:
        by_state = GaugeMetricFamily("vmmgr_hosts", "Hosts by state", labels=["state"])
        counts: dict[str, int] = defaultdict(int)
        for state in ("up", "down", "maintenance"):
            counts[state] = 0
        g = {name: GaugeMetricFamily(name, help_, labels=["host"]) for name, help_ in (
            ("vmmgr_host_up", "1 when vmmgr reaches the host's libvirt"),
            ("vmmgr_host_maintenance", "1 when the host is in maintenance"),
            ("vmmgr_host_vcpus", "Host logical CPUs"),
            ("vmmgr_host_memory_mib", "Host memory"),
            ("vmmgr_host_vms", "VMs placed on the host"),
            ("vmmgr_host_used_vcpus", "vCPUs of the VMs placed on the host"),
            ("vmmgr_host_used_memory_mib", "Memory of the VMs placed on the host"),
            ("vmmgr_host_cpu_utilization", "Latest host CPU utilisation sample (0..1)"),
        )}
        for h in hosts:
            counts["maintenance" if h.maintenance else h.state] += 1
            n, c, m = used.get(h.name, (0, 0, 0))
            for name, value in (("vmmgr_host_up", int(h.state == "up")),
                                ("vmmgr_host_maintenance", int(h.maintenance)),
                                ("vmmgr_host_vcpus", h.cpus),
                                ("vmmgr_host_memory_mib", h.memory_mib),
                                ("vmmgr_host_vms", n), ("vmmgr_host_used_vcpus", c),
                                ("vmmgr_host_used_memory_mib", m)):
                g[name].add_metric([h.name], value)
            if h.name in cpu:
                g["vmmgr_host_cpu_utilization"].add_metric([h.name], cpu[h.name])
        for state, n in counts.items():
            by_state.add_metric([state], n)
        return [by_state, *g.values()]

    @staticmethod
    def _devices(devices: list[Device]) -> list[Metric]:
        labels = ["device", "host", "kind", "model"]
        health = GaugeMetricFamily("vmmgr_device_health", "1 for the device's current health",
                                   labels=[*labels, "health"])
        gauges = {key: GaugeMetricFamily(name, help_, labels=labels)
                  for key, (name, help_) in GPU_GAUGES.items()}
        for d in devices:
            values = [d.id, d.host, d.kind, d.model]
            health.add_metric([*values, d.health], 1)
            nvml = d.nvml or {}
            for key, family in gauges.items():
                v = nvml.get(key)
                if isinstance(v, int | float) and not isinstance(v, bool):
                    family.add_metric(values, v / 1000 if key == "power_mw" else v)
        return [health, *gauges.values()]

    @staticmethod
    def _policies(rows: list[PolicyConfig]) -> list[Metric]:
        enabled = GaugeMetricFamily("vmmgr_policy_enabled", "1 when the policy runs "
                                    "periodically", labels=["policy"])
        last = GaugeMetricFamily("vmmgr_policy_last_run_timestamp_seconds",
                                 "When the policy last ran", labels=["policy"])
        size = GaugeMetricFamily("vmmgr_policy_last_plan_actions",
                                 "Actions in the policy's last plan", labels=["policy"])
        for p in rows:
            enabled.add_metric([p.name], int(p.enabled))
            if p.last_run is not None:
                last.add_metric([p.name], p.last_run.timestamp())
            actions = (p.last_result or {}).get("actions")
            n = len(actions) if isinstance(actions, list) else actions
            if isinstance(n, int) and not isinstance(n, bool):
                size.add_metric([p.name], n)
        return [enabled, last, size]

    @staticmethod
    def _projects(s: Any, rows: list[Project]) -> list[Metric]:
        quota = GaugeMetricFamily("vmmgr_project_quota", "Project quota by resource",
                                  labels=["project", "resource"])
        usage = GaugeMetricFamily("vmmgr_project_usage", "What a project's VMs hold",
                                  labels=["project", "resource"])
        held = {p: (c, m) for p, c, m in s.exec(
            select(VM.project, func.coalesce(func.sum(VM.vcpus), 0),
                   func.coalesce(func.sum(VM.memory_mib), 0)).group_by(VM.project)).all()}
        for p in rows:
            for key, value in sorted((p.quotas or {}).items()):
                quota.add_metric([p.name, key], value)
            c, m = held.get(p.name, (0, 0))
            usage.add_metric([p.name, "vcpus"], c)
            usage.add_metric([p.name, "memory_mib"], m)
        return [quota, usage]


@dataclass
class MetricsServer:
    httpd: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Metrics:
    """One daemon's metrics. ``store`` None leaves out the store gauges."""

    def __init__(self, store: Store | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.rpc_requests = Counter("vmmgr_rpc_requests", "RPCs handled, by method and status "
                                    "code", ["method", "code"], registry=r)
        self.rpc_latency = Histogram("vmmgr_rpc_duration_seconds", "RPC handling time",
                                     ["method"], buckets=RPC_BUCKETS, registry=r)
        self.rpc_in_flight = Gauge("vmmgr_rpc_in_flight", "RPCs being handled", registry=r)
        self.auth_failures = Counter("vmmgr_auth_failures", "Calls refused by authentication, "
                                     "authorization or quota", ["code"], registry=r)
        self.audit_write_errors = Counter("vmmgr_audit_write_errors", "Audit records that "
                                          "could not be written", registry=r)
        self.policy_runs = Counter("vmmgr_policy_runs", "Policy runs by result",
                                   ["policy", "result"], registry=r)
        self.policy_plan_size = Histogram("vmmgr_policy_plan_actions", "Actions per policy "
                                          "plan", ["policy"], buckets=PLAN_BUCKETS, registry=r)
        self.policy_duration = Histogram("vmmgr_policy_run_duration_seconds", "Policy run "
                                         "time (plan and execute)", ["policy"], registry=r)
        if store is not None:
            r.register(StoreCollector(store))

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        self.rpc_requests.labels(method, code).inc()
        self.rpc_latency.labels(method).observe(seconds)

    def observe_policy_run(self, policy: str, actions: int, seconds: float, ok: bool) -> None:
        """For the policy runner: one call per run (plan size = number of actions)."""
        self.policy_runs.labels(policy, "ok" if ok else "error").inc()
        self.policy_plan_size.labels(policy).observe(actions)
        self.policy_duration.labels(policy).observe(seconds)

    def render(self) -> bytes:
        """The text exposition format, as a scrape returns it."""
        return generate_latest(self.registry)

    def serve(self, host: str, port: int, *, certfile: str = "", keyfile: str = "",
              cafile: str = "", client_auth: bool = False) -> MetricsServer:
        """Serve /metrics over HTTP(S) in a daemon thread."""
        kw: dict[str, Any] = {}
        if certfile:
            kw = {"certfile": certfile, "keyfile": keyfile,
                  "client_cafile": cafile or None, "client_auth_required": client_auth}
        httpd, thread = start_http_server(port, host, registry=self.registry, **kw)
        return MetricsServer(httpd, thread)
