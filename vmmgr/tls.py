"""Transport security of vmmgrd: what may listen where, and the server's TLS credentials.

Local listeners (a unix socket, or a loopback address) may be plaintext. Any other address
needs TLS (``tls_cert`` + ``tls_key``), with client certificates checked against ``tls_ca``
(mTLS) unless ``client_auth`` is off; plaintext there takes an explicit ``insecure``, which is
logged loudly at every start.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

import grpc

from vmmgr.config import Config

log = logging.getLogger(__name__)

AUTH_MODES = ("auto", "on", "off")


def split_host_port(listen: str) -> tuple[str, str]:
    """"[::1]:50051" -> ("::1", "50051"); "0.0.0.0:1" -> ("0.0.0.0", "1")."""
    if listen.startswith("["):
        host, _, rest = listen[1:].partition("]")
        return host, rest.lstrip(":")
    host, _, port = listen.rpartition(":")
    return host, port


def is_local(listen: str) -> bool:
    """True for a unix socket or a loopback address (localhost, 127.0.0.0/8, ::1)."""
    if listen.startswith(("unix:", "unix-abstract:", "/")):
        return True
    host, _ = split_host_port(listen)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read(path: str, setting: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SystemExit(f"vmmgrd: cannot read {setting} {path}: {exc.strerror}") from None


def server_credentials(config: Config) -> grpc.ServerCredentials | None:
    """TLS credentials from the config; None when no certificate is configured."""
    if not config.tls_cert and not config.tls_key:
        return None
    if not (config.tls_cert and config.tls_key):
        raise SystemExit("vmmgrd: tls_cert and tls_key go together: set both or neither")
    if config.client_auth and not config.tls_ca:
        raise SystemExit("vmmgrd: client_auth (mTLS) needs tls_ca, the CA that signs client "
                         "certificates; set tls_ca or client_auth = false")
    ca = _read(config.tls_ca, "tls_ca") if config.tls_ca else None
    return grpc.ssl_server_credentials(
        [(_read(config.tls_key, "tls_key"), _read(config.tls_cert, "tls_cert"))],
        root_certificates=ca,
        require_client_auth=bool(config.client_auth and ca),
    )


def check_transport(config: Config, listen: str) -> grpc.ServerCredentials | None:
    """The credentials for ``listen``; refuses plaintext off-loopback without ``insecure``."""
    creds = server_credentials(config)
    if creds is None and listen and not is_local(listen):
        if not config.insecure:
            raise SystemExit(
                f"vmmgrd: refusing to listen on {listen} without TLS. Set tls_cert and tls_key "
                "(and tls_ca for client certificates; `vmmgr certs init DIR` makes a lab CA), "
                "listen on a loopback address or unix socket, or pass --insecure to accept "
                "plaintext from the network.")
        log.warning("INSECURE: vmmgrd serves plaintext gRPC on %s, reachable from the network; "
                    "tokens and VM data travel unencrypted (--insecure)", listen)
    elif creds is not None and not config.client_auth and not is_local(listen):
        log.warning("TLS without client certificates on %s (client_auth = false): only tokens "
                    "authenticate callers", listen)
    return creds


def auth_required(config: Config, listen: str) -> bool:
    """Whether every call needs a token: ``auth`` on/off, or auto = on off-loopback."""
    mode = config.auth.lower()
    if mode not in AUTH_MODES:
        raise SystemExit(f"vmmgrd: auth must be one of {', '.join(AUTH_MODES)}, not {mode!r}")
    if mode == "auto":
        return bool(listen) and not is_local(listen)
    if mode == "off" and listen and not is_local(listen):
        if not config.insecure:
            raise SystemExit(f"vmmgrd: auth = off while listening on {listen} lets anyone on "
                             "the network act as admin; pass --insecure to insist")
        log.warning("INSECURE: authentication is off on %s (auth = off, --insecure)", listen)
    return mode == "on"
