"""Who is calling: bearer tokens (only their sha256 is stored) become a Principal."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sqlmodel import select

from vmmgr.errors import Unauthenticated
from vmmgr.state import Store, repo
from vmmgr.state.models import Role, Token

log = logging.getLogger(__name__)

AUTH_HEADER = "authorization"
BOOTSTRAP_TOKEN_NAME = "bootstrap-admin"
MAX_SECRET = 512


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller. ``project`` None means every project (admin tokens, or auth off)."""

    name: str
    role: Role
    project: str | None = None
    token_id: str = ""

    @property
    def scoped(self) -> bool:
        return self.project is not None


def bearer_secret(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The token in ``authorization: Bearer <token>``, None when absent; malformed -> error."""
    for key, value in metadata or ():
        if key.lower() != AUTH_HEADER:
            continue
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        scheme, _, secret = text.strip().partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret or len(secret) > MAX_SECRET:
            raise Unauthenticated(
                "the authorization metadata must be 'Bearer <token>'", field="authorization"
            )
        return secret
    return None


MISSING_TOKEN = (
    "this vmmgrd requires a bearer token: send metadata 'authorization: Bearer <token>' "
    "(vmmgr CLI: `token` in ~/.config/vmmgr/config.toml, env VMMGR_TOKEN or --token)"
)


def authenticate(
    store: Store,
    metadata: Iterable[tuple[str, str | bytes]] | None,
    *,
    required: bool,
    anonymous: str = "anonymous",
) -> Principal:
    """Resolve the caller. A presented token is always verified and its role applies, even
    when tokens are not required; without one the caller is ``anonymous`` (an unscoped admin)
    unless ``required``."""
    secret = bearer_secret(metadata)
    if secret is None:
        if required:
            raise Unauthenticated(MISSING_TOKEN)
        return Principal(anonymous, Role.ADMIN, None)
    with store.read_session() as s:
        token = repo.verify_token(s, secret)
    if token is None:
        raise Unauthenticated("the bearer token is unknown or revoked")
    role = Role(token.role)
    return Principal(token.name, role, None if role is Role.ADMIN else token.project, token.id)


def ensure_bootstrap_token(store: Store, path: Path) -> None:
    """Make sure the admin token in ``path`` works, creating both if the file is missing.

    A missing file gets a fresh admin token whose secret is written there (mode 0600); an
    existing file's secret is registered as an admin token unless it is known already (a
    revoked bootstrap token stays revoked). The secret itself is never logged.
    """
    if path.exists():
        secret = path.read_text(encoding="utf-8").strip()
        if not secret:
            raise SystemExit(f"vmmgrd: admin token file {path} is empty")
        digest = repo.hash_secret(secret)
        with store.session() as s:
            known = s.exec(select(Token).where(Token.hash == digest)).first()
            if known is None:
                s.add(Token(name=BOOTSTRAP_TOKEN_NAME, project="default",
                            role=Role.ADMIN.value, hash=digest))
                log.info("registered the admin token from %s", path)
            elif known.revoked:
                log.warning("the admin token in %s was revoked; it stays revoked", path)
        return
    with store.session() as s:
        repo.ensure_project(s, "default")
        _, secret = repo.create_token(s, BOOTSTRAP_TOKEN_NAME, "default", Role.ADMIN.value)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(secret + "\n")
    log.warning("created an admin token; its secret is in %s (mode 0600)", path)
