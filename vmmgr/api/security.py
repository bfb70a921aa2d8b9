"""The server side of issue 7 in one call for build_server: transport checks and credentials
(vmmgr/tls.py), the bootstrap admin token, metrics, and the API interceptor."""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import grpc
from sqlmodel import select

from vmmgr import tls
from vmmgr.api.interceptors import ApiInterceptor
from vmmgr.auth.principal import ensure_bootstrap_token
from vmmgr.config import Config
from vmmgr.metrics import Metrics, MetricsServer
from vmmgr.state import Store
from vmmgr.state.models import Role, Token

log = logging.getLogger(__name__)


@dataclass
class ServerSecurity:
    interceptor: ApiInterceptor
    credentials: grpc.ServerCredentials | None
    metrics: Metrics
    auth_required: bool


def prepare(config: Config, store: Store, listen: str,
            metrics: Metrics | None = None) -> ServerSecurity:
    """Check the transport for ``listen`` (SystemExit with the reason when it is not allowed)
    and build the interceptor. ``metrics`` None makes a fresh registry for this server."""
    creds = tls.check_transport(config, listen)
    auth = tls.auth_required(config, listen)
    if config.admin_token_file:
        ensure_bootstrap_token(store, Path(config.admin_token_file))
    elif auth and not _has_admin(store):
        log.warning("authentication is on but no admin token exists: set admin_token_file to "
                    "bootstrap one")
    metrics = metrics if metrics is not None else Metrics(store)
    log.info("API security: %s, tokens %s", "TLS" + (" + client certificates"
             if creds is not None and config.client_auth else "") if creds is not None
             else "plaintext", "required" if auth else "optional")
    return ServerSecurity(ApiInterceptor(store, metrics, auth_required=auth), creds, metrics, auth)


def _has_admin(store: Store) -> bool:
    with store.read_session() as s:
        q = select(Token).where(Token.role == Role.ADMIN.value, Token.revoked == False)  # noqa: E712
        return s.exec(q).first() is not None


def add_ports(server: grpc.Server, sec: ServerSecurity, listen: str, unix_socket: str) -> int:
    """Bind ``listen`` (TLS when configured) and the unix socket; the TCP port (0 if none)."""
    port = 0
    if listen:
        if sec.credentials is not None:
            port = server.add_secure_port(listen, sec.credentials)
        else:
            port = server.add_insecure_port(listen)
        if port == 0:
            raise SystemExit(f"vmmgrd: cannot listen on {listen}")
    if unix_socket:
        path = Path(unix_socket)
        if path.exists() and stat.S_ISSOCK(path.stat().st_mode):
            path.unlink()  # a stale socket from a previous run
        path.parent.mkdir(parents=True, exist_ok=True)
        if server.add_insecure_port(f"unix:{path}") == 0:
            raise SystemExit(f"vmmgrd: cannot listen on unix socket {path}")
        if path.exists():
            os.chmod(path, 0o660)
    if not listen and not unix_socket:
        raise SystemExit("vmmgrd: nothing to listen on: set listen and/or unix_socket")
    return port


def serve_metrics(config: Config, metrics: Metrics) -> MetricsServer | None:
    """Start /metrics on ``metrics_listen`` ("" = off). Off-loopback it uses the daemon's TLS
    certificate (and client certificates when client_auth is on), or needs ``insecure``.
    A port already in use is logged, not fatal: metrics must not keep the API down."""
    if not config.metrics_listen:
        return None
    host, port = tls.split_host_port(config.metrics_listen)
    tls_kw: dict[str, object] = {}
    if not tls.is_local(config.metrics_listen):
        if config.tls_cert:
            tls_kw = {"certfile": config.tls_cert, "keyfile": config.tls_key,
                      "cafile": config.tls_ca, "client_auth": config.client_auth}
        elif not config.insecure:
            raise SystemExit(f"vmmgrd: refusing to serve metrics on {config.metrics_listen} "
                             "without TLS (set tls_cert/tls_key, or --insecure)")
        else:
            log.warning("INSECURE: metrics served in plaintext on %s", config.metrics_listen)
    try:
        server = metrics.serve(host or "127.0.0.1", int(port), **tls_kw)  # type: ignore[arg-type]
    except OSError as exc:
        log.error("cannot serve metrics on %s: %s", config.metrics_listen, exc)
        return None
    log.info("metrics on http%s://%s/metrics", "s" if tls_kw else "",
             config.metrics_listen.rsplit(":", 1)[0] + f":{server.port}")
    return server
