"""Per-host libvirt configuration files for the lab (libvirt's own key = value format).

Why each setting (see /work/shared/lab-notes.md): a distinct ``host_uuid`` or libvirt refuses to
migrate "to the same host"; ``migration_host``/``migration_address`` or the destination advertises
the shared hostname and the source cannot connect; no cgroups/namespaces because the daemons run
inside network + mount namespaces without systemd; ``lockd`` with a lockspace shared by all hosts
so that two hosts cannot run the same disk at once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HostConfig:
    """Everything that differs between two lab hosts."""

    index: int
    address: str
    host_uuid: str
    lockspace_dir: str  # shared by every host of the lab
    keepalive_interval: int = 5
    keepalive_count: int = 3


def _q(value: str) -> str:
    """Quote a string value for libvirt's config parser (no quotes or backslashes allowed)."""
    if '"' in value or "\\" in value or "\n" in value:
        raise ValueError(f"unsupported character in config value {value!r}")
    return f'"{value}"'


def _render(items: list[tuple[str, str | int]]) -> str:
    lines = ["# written by drivers/lab (vmmgr lab); do not edit"]
    for key, value in items:
        lines.append(f"{key} = {_q(value) if isinstance(value, str) else value}")
    return "\n".join(lines) + "\n"


def libvirtd_conf(cfg: HostConfig) -> str:
    return _render(
        [
            ("listen_tls", 0),
            ("listen_tcp", 1),
            ("listen_addr", cfg.address),
            ("auth_tcp", "none"),  # lab only: the network exists only between lab namespaces
            ("auth_unix_rw", "none"),
            ("unix_sock_group", "root"),
            ("unix_sock_rw_perms", "0770"),
            ("host_uuid", cfg.host_uuid),
            ("keepalive_interval", cfg.keepalive_interval),
            ("keepalive_count", cfg.keepalive_count),
            ("max_clients", 100),
            ("log_outputs", "3:file:/var/log/libvirt/libvirtd.log"),
        ]
    )


def qemu_conf(cfg: HostConfig) -> str:
    body = _render(
        [
            ("migration_host", cfg.address),
            ("migration_address", cfg.address),
            ("lock_manager", "lockd"),
            ("user", "root"),
            ("group", "root"),
            ("dynamic_ownership", 0),
            ("remember_owner", 0),
            ("security_driver", "none"),
            ("keepalive_interval", cfg.keepalive_interval),
            ("keepalive_count", cfg.keepalive_count),
            ("stdio_handler", "logd"),
        ]
    )
    # Lists are not covered by _render: empty lists switch cgroups and qemu namespaces off.
    return body + "cgroup_controllers = [ ]\nnamespaces = [ ]\n"


def qemu_lockd_conf(cfg: HostConfig) -> str:
    return _render(
        [
            ("auto_disk_leases", 1),
            ("file_lockspace_dir", cfg.lockspace_dir),
        ]
    )


def virtlogd_conf(cfg: HostConfig) -> str:
    return _render([("log_outputs", "3:file:/var/log/libvirt/virtlogd.log")])


def virtlockd_conf(cfg: HostConfig) -> str:
    return _render([("log_outputs", "3:file:/var/log/libvirt/virtlockd.log")])


def libvirt_conf(cfg: HostConfig) -> str:
    """Client config seen by processes inside the namespace (virsh run there)."""
    return _render([("uri_default", "qemu:///system")])


FILES = {
    "libvirtd.conf": libvirtd_conf,
    "qemu.conf": qemu_conf,
    "qemu-lockd.conf": qemu_lockd_conf,
    "virtlogd.conf": virtlogd_conf,
    "virtlockd.conf": virtlockd_conf,
    "libvirt.conf": libvirt_conf,
}


def render_all(cfg: HostConfig) -> dict[str, str]:
    """File name (relative to the host's /etc/libvirt) -> content."""
    return {name: fn(cfg) for name, fn in FILES.items()}
