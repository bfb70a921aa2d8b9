"""Daemon configuration: defaults < config file (TOML) < environment (VMMGR_*) < flags."""

from __future__ import annotations

import argparse
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from vmmgr.devices.fpga import validate_profile
from vmmgr.devices.model import FpgaProfile
from vmmgr.errors import InvalidArgument
from vmmgr.scheduler.config import SchedulerConfig

DEFAULT_CONFIG_FILE = Path("/etc/vmmgr/vmmgrd.toml")


@dataclass
class Config:
    listen: str = "127.0.0.1:50051"
    state_dir: Path = Path("/var/lib/vmmgr")
    db_url: str = ""  # "" = SQLite in state_dir; postgresql+psycopg://... for Postgres
    image_pool: str = "vmmgr-images"
    image_pool_path: str = "/var/lib/vmmgr/images"
    vm_pool: str = "vmmgr-vms"
    vm_pool_path: str = "/var/lib/vmmgr/vms"
    default_domain_type: str = ""  # "" = kvm where the host offers it, else qemu (TCG)
    default_network: str = ""  # "" = user-mode networking (needs no host bridge)
    resync_interval_s: float = 30.0
    inventory_interval_s: float = 300.0
    keepalive_interval_s: int = 5
    keepalive_count: int = 3
    shutdown_timeout_s: float = 60.0
    operation_workers: int = 4
    rpc_workers: int = 16
    # placement (vmmgr/scheduler): overcommit ratios, spread or pack, weigher multipliers
    cpu_ratio: float = 4.0
    memory_ratio: float = 1.0
    disk_ratio: float = 1.0
    placement_strategy: str = "spread"
    pool_strategies: list[str] = field(default_factory=list)  # "POOL=pack"
    weigher_multipliers: list[str] = field(default_factory=list)  # "gpu_fragmentation=3"
    # migrations: concurrency limits (0 = unlimited), operator policy, the lab's shared storage
    migrations_per_host_out: int = 2
    migrations_per_host_in: int = 2
    migrations_per_cluster: int = 8
    allow_vgpu_live_migration: bool = False
    migration_unsafe: bool = False  # shared disks on a local filesystem (lab only)
    # policies: argv templates with {host} and {address}, run per argument (never a shell)
    recover_heartbeat_timeout_s: float = 15.0  # both channels silent this long: suspect
    recover_grace_s: float = 30.0  # suspect this long: failed, fenced, HA VMs restarted
    # fence-storm guard: at most this share of the hosts fenced per 15 minutes (0.34 of a
    # 2-host cluster is 0: two hosts cannot tell a dead peer from a partition)
    fence_max_share: float = 0.34
    crash_backoff_s: float = 5.0  # first restart of a crashed HA VM; doubles, max 3 in 10 min
    fence_command: list[str] = field(default_factory=list)  # e.g. fence_ipmilan -a {address}
    power_command: list[str] = field(default_factory=list)  # powers a consolidated host off
    # FPGA program steps, from the TOML file only, e.g.
    #   [fpga_profiles.u250-xdma]
    #   bitstream = "/lib/firmware/x.xclbin"
    #   sha256 = "..."
    #   command = ["xbutil", "program", "-d", "{device}", "-u", "{bitstream}"]
    fpga_profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    log_level: str = "INFO"
    log_json: bool = False
    # security and observability (vmmgr/tls.py, vmmgr/auth, vmmgr/metrics.py)
    unix_socket: str = ""  # also serve on this unix socket (mode 0660)
    tls_cert: str = ""  # server certificate (PEM); with tls_key turns TLS on
    tls_key: str = ""
    tls_ca: str = ""  # CA that signs client certificates (mTLS)
    client_auth: bool = True  # with TLS: require a client certificate signed by tls_ca
    insecure: bool = False  # allow plaintext (or auth = off) on a non-loopback address
    auth: str = "auto"  # auto: tokens required off-loopback | on | off
    admin_token_file: str = ""  # bootstrap admin token; created (0600) if missing
    metrics_listen: str = "127.0.0.1:9464"  # Prometheus /metrics; "" = off
    # start-up conveniences for `make run`; both idempotent
    register_hosts: list[str] = field(default_factory=list)  # "name=uri"
    import_images: list[str] = field(default_factory=list)  # "name=path"

    def fpga_profile_map(self) -> dict[str, FpgaProfile]:
        out = {}
        for name, p in self.fpga_profiles.items():
            try:
                profile = FpgaProfile(
                    name=name,
                    bitstream=str(p["bitstream"]),
                    sha256=str(p["sha256"]),
                    command=tuple(str(a) for a in p["command"]),
                    timeout_s=float(p.get("timeout_s", 600)),
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise InvalidArgument(f"fpga_profiles.{name}", f"bad profile: {exc}") from None
            validate_profile(profile)
            out[name] = profile
        return out

    def scheduler(self) -> SchedulerConfig:
        """The scheduler's knobs; a bad value raises InvalidArgument naming the setting."""

        def pairs(items: list[str], setting: str) -> dict[str, str]:
            out = {}
            for item in items:
                key, sep, value = item.partition("=")
                if not sep:
                    raise InvalidArgument(setting, f"{item!r}: expected NAME=VALUE")
                out[key] = value
            return out

        try:
            weights = {
                k: float(v)
                for k, v in pairs(self.weigher_multipliers, "weigher_multipliers").items()
            }
        except ValueError as exc:
            raise InvalidArgument("weigher_multipliers", str(exc)) from None
        return SchedulerConfig(
            cpu_ratio=self.cpu_ratio,
            memory_ratio=self.memory_ratio,
            disk_ratio=self.disk_ratio,
            # SchedulerConfig checks these strings and names the bad knob
            default_strategy=self.placement_strategy,  # type: ignore[arg-type]
            pool_strategies=pairs(self.pool_strategies, "pool_strategies"),  # type: ignore[arg-type]
            weigher_multipliers=weights,
        )


def _coerce(current: Any, raw: Any) -> Any:
    if isinstance(current, bool):
        return raw if isinstance(raw, bool) else str(raw).lower() in ("1", "true", "yes", "on")
    if isinstance(current, Path):
        return Path(raw)
    if isinstance(current, list):
        return list(raw) if isinstance(raw, list) else [x for x in str(raw).split(",") if x]
    return type(current)(raw)


def load(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(prog="vmmgrd", description="vmmgr daemon")
    parser.add_argument("--config", type=Path, default=None, help="TOML file")
    for f in fields(Config):
        flag = "--" + f.name.replace("_", "-")
        if f.name in ("register_hosts", "import_images", "pool_strategies", "weigher_multipliers"):
            continue
        if f.name == "insecure":  # a bare flag: plaintext off-loopback must be explicit
            parser.add_argument(flag, dest=f.name, action="store_const", const=True)
            continue
        parser.add_argument(flag, dest=f.name, default=None)
    parser.add_argument(
        "--register-host", dest="register_hosts", action="append", metavar="NAME=URI"
    )
    parser.add_argument(
        "--import-image", dest="import_images", action="append", metavar="NAME=PATH"
    )
    parser.add_argument(
        "--pool-strategy", dest="pool_strategies", action="append", metavar="POOL=spread|pack"
    )
    parser.add_argument(
        "--weigher", dest="weigher_multipliers", action="append", metavar="NAME=MULTIPLIER"
    )
    args = parser.parse_args(argv)

    cfg = Config()
    path = args.config or (DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.exists() else None)
    if path is not None:
        with open(path, "rb") as fh:
            for key, value in tomllib.load(fh).items():
                if not hasattr(cfg, key):
                    raise SystemExit(f"vmmgrd: {path}: unknown setting {key!r}")
                setattr(cfg, key, _coerce(getattr(cfg, key), value))
    for f in fields(Config):
        env = os.environ.get("VMMGR_" + f.name.upper())
        if env is not None:
            setattr(cfg, f.name, _coerce(getattr(cfg, f.name), env))
    for f in fields(Config):
        value = getattr(args, f.name, None)
        if value is not None:
            setattr(cfg, f.name, _coerce(getattr(cfg, f.name), value))
    return cfg
