"""Client settings of the `vmmgr` CLI: defaults < config file < environment < flags.

The file is TOML, ``$VMMGR_CONFIG`` or ``$XDG_CONFIG_HOME/vmmgr/config.toml`` (default
``~/.config/vmmgr/config.toml``), with top-level keys::

    endpoint = "vmmgr.lab:50051"      # host:port, or a unix socket path
    ca = "/etc/vmmgr/pki/ca.pem"      # CA of the server certificate; turns TLS on
    cert = "~/.config/vmmgr/client.pem"   # client certificate and key (mTLS)
    key = "~/.config/vmmgr/client-key.pem"
    token = "vmm_..."                 # or token_file = "~/.config/vmmgr/token"
    server_name = "vmmgr.lab"         # TLS name to check when the endpoint is an address
    tls = true                        # TLS with the system CAs (implied by ca)

Environment: VMMGR_ENDPOINT, VMMGR_CA, VMMGR_CERT, VMMGR_KEY, VMMGR_TOKEN, VMMGR_TOKEN_FILE,
VMMGR_SERVER_NAME, VMMGR_TLS.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import grpc

DEFAULT_ENDPOINT = "127.0.0.1:50051"


@dataclass(frozen=True)
class ClientConfig:
    endpoint: str = DEFAULT_ENDPOINT
    ca: str = ""
    cert: str = ""
    key: str = ""
    token: str = ""
    token_file: str = ""
    server_name: str = ""
    tls: bool = False

    @property
    def secure(self) -> bool:
        return self.tls or bool(self.ca or self.cert)

    def secret(self) -> str:
        """The bearer token: ``token``, else the first line of ``token_file``."""
        if self.token:
            return self.token.strip()
        if self.token_file:
            return _read_text(self.token_file, "token_file").strip()
        return ""


class ClientConfigError(Exception):
    """A bad setting; the message names it."""


def default_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("VMMGR_CONFIG"):
        return Path(env["VMMGR_CONFIG"]).expanduser()
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "vmmgr" / "config.toml"


def _coerce(name: str, value: Any) -> Any:
    if name == "tls":
        if isinstance(value, bool):
            return value
        return str(value).strip().lower() in ("1", "true", "yes", "on")
    if not isinstance(value, str):
        raise ClientConfigError(f"{name}: expected a string, got {value!r}")
    return value


def load(path: Path | None = None, *, env: Mapping[str, str] | None = None,
         flags: Mapping[str, Any] | None = None) -> ClientConfig:
    """Merge the layers; ``path`` None = the default file if it exists. Flags that are None
    are not set."""
    env = os.environ if env is None else env
    names = {f.name for f in fields(ClientConfig)}
    values: dict[str, Any] = {}
    explicit = path is not None
    file = path if path is not None else default_path(env)
    if file.exists() or explicit:
        try:
            with open(file, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ClientConfigError(f"cannot read {file}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ClientConfigError(f"{file}: {exc}") from None
        for key, value in data.items():
            if key not in names:
                raise ClientConfigError(f"{file}: unknown setting {key!r}")
            values[key] = _coerce(key, value)
    for name in names:
        raw = env.get("VMMGR_" + name.upper())
        if raw:
            values[name] = _coerce(name, raw)
    for name, value in (flags or {}).items():
        if value is not None and name in names:
            values[name] = _coerce(name, value)
    for name in ("ca", "cert", "key", "token_file"):
        if values.get(name):
            values[name] = str(Path(values[name]).expanduser())
    if bool(values.get("cert")) != bool(values.get("key")):
        raise ClientConfigError("cert and key go together: set both or neither")
    return replace(ClientConfig(), **values)


def _read_text(path: str, setting: str) -> str:
    try:
        return Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise ClientConfigError(f"cannot read {setting} {path}: {exc.strerror}") from None


def _read_bytes(path: str, setting: str) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise ClientConfigError(f"cannot read {setting} {path}: {exc.strerror}") from None


class _BearerToken(grpc.UnaryUnaryClientInterceptor,
                   grpc.UnaryStreamClientInterceptor):
    """Adds ``authorization: Bearer <token>`` to every call (plaintext local channels too,
    where grpc's call credentials refuse to go)."""

    def __init__(self, token: str) -> None:
        self._md = ("authorization", f"Bearer {token}")

    def _with_token(self, details: Any) -> Any:
        md = [*(details.metadata or ()), self._md]
        return _Details(details.method, details.timeout, md, details.credentials,
                        getattr(details, "wait_for_ready", None),
                        getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any,
                              request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any,
                               request: Any) -> Any:
        return continuation(self._with_token(details), request)


@dataclass(frozen=True)
class _Details(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


def target(endpoint: str) -> str:
    return f"unix://{endpoint}" if endpoint.startswith("/") else endpoint


def make_channel(cfg: ClientConfig) -> grpc.Channel:
    """A channel to ``cfg.endpoint``: TLS/mTLS when configured, the token on every call."""
    options: list[tuple[str, Any]] = []
    if cfg.secure:
        creds = grpc.ssl_channel_credentials(
            root_certificates=_read_bytes(cfg.ca, "ca"),
            private_key=_read_bytes(cfg.key, "key"),
            certificate_chain=_read_bytes(cfg.cert, "cert"),
        )
        if cfg.server_name:
            options.append(("grpc.ssl_target_name_override", cfg.server_name))
        channel = grpc.secure_channel(target(cfg.endpoint), creds, options=options)
    else:
        channel = grpc.insecure_channel(target(cfg.endpoint))
    token = cfg.secret()
    if token:
        return grpc.intercept_channel(channel, _BearerToken(token))
    return channel
