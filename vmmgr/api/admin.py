"""AdminService: tokens (the secret is returned once, only its hash is stored), projects with
quotas, and the append-only audit log. Every RPC here needs the admin role."""

from __future__ import annotations

import re
from typing import TypeAlias

import grpc
from sqlmodel import Session

from vmmgr.api import convert
from vmmgr.api.errors import servicer
from vmmgr.auth.quota import GPU_PREFIX
from vmmgr.errors import AlreadyExists, InvalidArgument, NotFound
from vmmgr.requests import MODEL_RE, check_name
from vmmgr.state import Store, repo
from vmmgr.state.models import AuditRecord, Project, Role, Token
from vmmgr.v1 import admin_pb2, admin_pb2_grpc

Ctx: TypeAlias = grpc.ServicerContext

TOKEN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MAX_QUOTA = 1 << 53  # exact in every JSON reader
ROLES: dict[int, Role] = {
    admin_pb2.ROLE_VIEWER: Role.VIEWER,
    admin_pb2.ROLE_OPERATOR: Role.OPERATOR,
    admin_pb2.ROLE_ADMIN: Role.ADMIN,
}
ROLE_ENUM: dict[str, int] = {r.value: n for n, r in ROLES.items()}
AUDIT_PAGE = 100


def quotas_from_proto(q: admin_pb2.Quota, prefix: str = "project.quota") -> dict[str, int]:
    """Proto quota -> ``Project.quotas``: 0 vcpus/memory = no limit; a GPU entry always
    limits (0 = no GPUs of that model)."""
    out: dict[str, int] = {}
    for key, value in (("vcpus", q.vcpus), ("memory_mib", q.memory_mib)):
        if value > MAX_QUOTA:
            raise InvalidArgument(f"{prefix}.{key}", f"must be at most {MAX_QUOTA}")
        if value:
            out[key] = int(value)
    for model, count in q.gpus.items():
        if not MODEL_RE.match(model):
            raise InvalidArgument(f"{prefix}.gpus", f"{model[:80]!r} is not a valid GPU model")
        out[GPU_PREFIX + model] = int(count)
    return out


def quota_to_proto(quotas: dict[str, int]) -> admin_pb2.Quota:
    q = admin_pb2.Quota(vcpus=quotas.get("vcpus", 0), memory_mib=quotas.get("memory_mib", 0))
    for key, value in quotas.items():
        if key.startswith(GPU_PREFIX):
            q.gpus[key[len(GPU_PREFIX):]] = value
    return q


def project_to_proto(p: Project) -> admin_pb2.Project:
    return admin_pb2.Project(name=p.name, quota=quota_to_proto(p.quotas or {}))


def token_to_proto(t: Token) -> admin_pb2.Token:
    return admin_pb2.Token(id=t.id, name=t.name, project=t.project,
                           role=ROLE_ENUM.get(t.role, 0),  # type: ignore[arg-type]
                           create_time=convert.ts(t.created_at), revoked=t.revoked)


def audit_to_proto(r: AuditRecord) -> admin_pb2.AuditRecord:
    return admin_pb2.AuditRecord(seq=r.seq or 0, time=convert.ts(r.time), principal=r.principal,
                                 project=r.project, method=r.method, target=r.target,
                                 result_code=r.result_code, message=r.message)


def _project_of(s: Session, name: str) -> Project:
    if name == "default":
        return repo.ensure_project(s, name)
    try:
        return repo.get_project(s, name)
    except NotFound:
        raise NotFound(f"project {name!r} not found", field="project") from None


@servicer
class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, store: Store) -> None:
        self.store = store

    def CreateToken(
        self, request: admin_pb2.CreateTokenRequest, context: Ctx
    ) -> admin_pb2.CreateTokenResponse:
        if not TOKEN_NAME_RE.match(request.name):
            raise InvalidArgument("name", "1-64 letters, digits, '.', '_', '@' or '-', "
                                  "starting with a letter or digit")
        role = ROLES.get(request.role, Role.VIEWER if not request.role else None)
        if role is None:
            raise InvalidArgument("role", f"unknown role {request.role}")
        project = request.project or "default"
        check_name("project", project)
        with self.store.session() as s:
            _project_of(s, project)
            if any(t.name == request.name and not t.revoked for t in repo.list_tokens(s)):
                raise AlreadyExists(f"a live token named {request.name!r} exists", field="name")
            token, secret = repo.create_token(s, request.name, project, role.value)
            return admin_pb2.CreateTokenResponse(token=token_to_proto(token), secret=secret)

    def ListTokens(
        self, request: admin_pb2.ListTokensRequest, context: Ctx
    ) -> admin_pb2.ListTokensResponse:
        with self.store.read_session() as s:
            return admin_pb2.ListTokensResponse(
                tokens=[token_to_proto(t) for t in repo.list_tokens(s)])

    def RevokeToken(
        self, request: admin_pb2.RevokeTokenRequest, context: Ctx
    ) -> admin_pb2.RevokeTokenResponse:
        if not request.id:
            raise InvalidArgument("id", "is required")
        with self.store.session() as s:
            try:
                repo.revoke_token(s, request.id)
            except NotFound:
                raise NotFound(f"token {request.id[:80]!r} not found", field="id") from None
        return admin_pb2.RevokeTokenResponse()

    def CreateProject(
        self, request: admin_pb2.CreateProjectRequest, context: Ctx
    ) -> admin_pb2.CreateProjectResponse:
        check_name("project.name", request.project.name)
        quotas = quotas_from_proto(request.project.quota)
        with self.store.session() as s:
            p = repo.add_project(s, Project(name=request.project.name, quotas=quotas))
            return admin_pb2.CreateProjectResponse(project=project_to_proto(p))

    def ListProjects(
        self, request: admin_pb2.ListProjectsRequest, context: Ctx
    ) -> admin_pb2.ListProjectsResponse:
        with self.store.read_session() as s:
            return admin_pb2.ListProjectsResponse(
                projects=[project_to_proto(p) for p in repo.list_projects(s)])

    def UpdateProject(
        self, request: admin_pb2.UpdateProjectRequest, context: Ctx
    ) -> admin_pb2.UpdateProjectResponse:
        """Replaces the project's whole quota."""
        check_name("project.name", request.project.name)
        quotas = quotas_from_proto(request.project.quota)
        with self.store.session() as s:
            _project_of(s, request.project.name)
            p = repo.set_project_quotas(s, request.project.name, quotas)
            return admin_pb2.UpdateProjectResponse(project=project_to_proto(p))

    def ListAuditRecords(
        self, request: admin_pb2.ListAuditRecordsRequest, context: Ctx
    ) -> admin_pb2.ListAuditRecordsResponse:
        if not 0 <= request.limit <= repo.MAX_AUDIT_PAGE:
            raise InvalidArgument("limit", f"must be between 0 and {repo.MAX_AUDIT_PAGE}")
        if request.after_seq < 0:
            raise InvalidArgument("after_seq", "must not be negative")
        with self.store.read_session() as s:
            rows = repo.list_audit(s, since_seq=request.after_seq,
                                   limit=request.limit or AUDIT_PAGE,
                                   principal=request.principal or None)
            return admin_pb2.ListAuditRecordsResponse(records=[audit_to_proto(r) for r in rows])
