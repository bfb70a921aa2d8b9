"""Projects (quotas), API tokens (only a hash is stored) and the append-only audit log."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from datetime import datetime

from sqlalchemy import func
from sqlmodel import Session, col, select

from vmmgr.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from vmmgr.state.models import VM, AuditRecord, Project, Role, Token
from vmmgr.state.repo._common import check_choice, get_or_404, insert, insert_rows
from vmmgr.state.rows import build
from vmmgr.state.types import utcnow

TOKEN_PREFIX = "vmm_"
MAX_AUDIT_PAGE = 10_000


def add_project(session: Session, project: Project) -> Project:
    _check_quotas(project.quotas)
    return insert(
        session,
        project,
        duplicate=lambda: AlreadyExists(f"project {project.name!r} exists", field="name"),
    )


def ensure_project(session: Session, name: str) -> Project:
    """The project, created with no quotas if missing (the daemon ensures "default")."""
    project = session.get(Project, name)
    return project if project is not None else add_project(session, Project(name=name))


def get_project(session: Session, name: str) -> Project:
    return get_or_404(session, Project, name, "project")


def list_projects(session: Session) -> list[Project]:
    return list(session.exec(select(Project).order_by(col(Project.name))))


def _check_quotas(quotas: Mapping[str, int]) -> None:
    for key, value in quotas.items():
        if not isinstance(value, int) or value < 0:
            raise InvalidArgument(f"quotas.{key}", "must be a non-negative integer")


def set_project_quotas(session: Session, name: str, quotas: Mapping[str, int]) -> Project:
    _check_quotas(quotas)
    project = get_project(session, name)
    project.quotas = dict(quotas)
    session.flush()
    return project


def delete_project(session: Session, name: str) -> Project:
    project = get_project(session, name)
    vms = session.exec(select(func.count()).select_from(VM).where(VM.project == name)).one()
    tokens = session.exec(
        select(func.count())
        .select_from(Token)
        .where(Token.project == name, col(Token.revoked).is_(False))
    ).one()
    if vms or tokens:
        raise FailedPrecondition(
            f"project {name!r} still has {vms} VMs and {tokens} live tokens", field="name"
        )
    session.delete(project)
    session.flush()
    return project


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(
    session: Session, name: str, project: str = "default", role: str = Role.VIEWER.value
) -> tuple[Token, str]:
    """A new token and its secret; the secret is returned once and never stored."""
    check_choice("role", role, Role)
    if not name:
        raise InvalidArgument("name", "a token needs a name")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = Token(name=name, project=project, role=role, hash=hash_secret(secret))
    insert(session, token, duplicate=lambda: AlreadyExists("token collision", field="name"))
    return token, secret


def verify_token(session: Session, secret: str) -> Token | None:
    """The live token for ``secret``, or None (unknown or revoked)."""
    token = session.exec(select(Token).where(Token.hash == hash_secret(secret))).first()
    if token is None or token.revoked:
        return None
    return token


def get_token(session: Session, token_id: str) -> Token:
    return get_or_404(session, Token, token_id, "token")


def list_tokens(session: Session, *, project: str | None = None) -> list[Token]:
    q = select(Token).order_by(col(Token.created_at), col(Token.id))
    if project is not None:
        q = q.where(Token.project == project)
    return list(session.exec(q))


def revoke_token(session: Session, token_id: str) -> Token:
    token = get_token(session, token_id)
    token.revoked = True
    session.flush()
    return token


def append_audit(
    session: Session,
    *,
    principal: str,
    method: str,
    project: str = "",
    target: str = "",
    result_code: str = "OK",
    message: str = "",
    time: datetime | None = None,
) -> AuditRecord:
    """Append one record. There is deliberately no update or delete for the audit log."""
    rec = build(
        AuditRecord,
        {
            "time": time or utcnow(),
            "principal": principal,
            "project": project,
            "method": method,
            "target": target,
            "result_code": result_code,
            "message": message,
        },
    )
    (rec.seq,) = insert_rows(session, AuditRecord, [rec])
    return rec


def list_audit(
    session: Session,
    *,
    since_seq: int = 0,
    limit: int = 1000,
    principal: str | None = None,
    project: str | None = None,
) -> list[AuditRecord]:
    """Records with ``seq > since_seq``, oldest first."""
    if limit <= 0:
        raise InvalidArgument("limit", "must be positive")
    q = select(AuditRecord).where(col(AuditRecord.seq) > since_seq)
    if principal is not None:
        q = q.where(AuditRecord.principal == principal)
    if project is not None:
        q = q.where(AuditRecord.project == project)
    q = q.order_by(col(AuditRecord.seq)).limit(min(limit, MAX_AUDIT_PAGE))
    return list(session.exec(q))
