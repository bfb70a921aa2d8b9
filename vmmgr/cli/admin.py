"""CLI commands for issue 7: tokens, projects and quotas, the audit log, lab certificates."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from vmmgr.cli import certs
from vmmgr.cli import output as out
from vmmgr.v1 import admin_pb2

ROLE_NAMES = {"viewer": admin_pb2.ROLE_VIEWER, "operator": admin_pb2.ROLE_OPERATOR,
              "admin": admin_pb2.ROLE_ADMIN}


class HasAdmin(Protocol):
    admin: Any
    timeout: float


Handler = Callable[[argparse.Namespace, Any], int]


def _role(value: int) -> str:
    return out.enum_name(admin_pb2.Role.Name(value), "ROLE_")  # type: ignore[arg-type]


def _quota_text(q: admin_pb2.Quota) -> str:
    parts = []
    if q.vcpus:
        parts.append(f"vcpus={q.vcpus}")
    if q.memory_mib:
        parts.append(f"memory_mib={q.memory_mib}")
    parts += [f"gpu:{m}={n}" for m, n in sorted(q.gpus.items())]
    return " ".join(parts) or "-"


def _show(args: argparse.Namespace, obj: Any, headers: list[str], rows: list[Any]) -> int:
    if args.output == "json":
        out.print_json(obj)
    else:
        out.print_table(headers, rows)
    return 0


# ---------------------------------------------------------------- tokens


def token_create(args: argparse.Namespace, c: HasAdmin) -> int:
    resp = c.admin.CreateToken(admin_pb2.CreateTokenRequest(
        name=args.name, project=args.project, role=ROLE_NAMES[args.role]), timeout=c.timeout)
    if args.output == "json":
        out.print_json(resp)
        return 0
    t = resp.token
    out.print_kv([("id", t.id), ("name", t.name), ("project", t.project),
                  ("role", _role(t.role)), ("secret", resp.secret)])
    sys.stderr.write("the secret is shown once; vmmgrd stores only its hash\n")
    return 0


TOKEN_HEADERS = ["ID", "NAME", "PROJECT", "ROLE", "CREATED", "REVOKED"]


def token_list(args: argparse.Namespace, c: HasAdmin) -> int:
    ts = list(c.admin.ListTokens(admin_pb2.ListTokensRequest(), timeout=c.timeout).tokens)
    return _show(args, ts, TOKEN_HEADERS, [
        (t.id, t.name, t.project, _role(t.role), t.create_time.ToJsonString(), t.revoked)
        for t in ts])


def token_revoke(args: argparse.Namespace, c: HasAdmin) -> int:
    c.admin.RevokeToken(admin_pb2.RevokeTokenRequest(id=args.id), timeout=c.timeout)
    print(f"token {args.id} revoked")
    return 0


# ---------------------------------------------------------------- projects


def _apply_quota(q: admin_pb2.Quota, args: argparse.Namespace) -> None:
    if args.vcpus is not None:
        q.vcpus = args.vcpus
    if args.memory_mib is not None:
        q.memory_mib = args.memory_mib
    for item in args.gpu or []:
        model, sep, count = item.rpartition("=")
        if not sep or not model:
            raise SystemExit(f"vmmgr: error: --gpu {item!r}: expected MODEL=COUNT or MODEL=-")
        if count == "-":
            q.gpus.pop(model, None)
        elif count.isdigit():
            q.gpus[model] = int(count)
        else:
            raise SystemExit(f"vmmgr: error: --gpu {item!r}: COUNT must be a number or '-'")


PROJECT_HEADERS = ["NAME", "QUOTA"]


def project_create(args: argparse.Namespace, c: HasAdmin) -> int:
    p = admin_pb2.Project(name=args.name)
    _apply_quota(p.quota, args)
    made = c.admin.CreateProject(admin_pb2.CreateProjectRequest(project=p),
                                 timeout=c.timeout).project
    return _show(args, made, PROJECT_HEADERS, [(made.name, _quota_text(made.quota))])


def project_list(args: argparse.Namespace, c: HasAdmin) -> int:
    ps = list(c.admin.ListProjects(admin_pb2.ListProjectsRequest(), timeout=c.timeout).projects)
    return _show(args, ps, PROJECT_HEADERS, [(p.name, _quota_text(p.quota)) for p in ps])


def project_set_quota(args: argparse.Namespace, c: HasAdmin) -> int:
    """Changes only the quotas named on the command line (--clear starts from none)."""
    ps = c.admin.ListProjects(admin_pb2.ListProjectsRequest(), timeout=c.timeout).projects
    current = next((p for p in ps if p.name == args.name), None)
    p = admin_pb2.Project(name=args.name)
    if current is not None and not args.clear:
        p.quota.CopyFrom(current.quota)
    _apply_quota(p.quota, args)
    made = c.admin.UpdateProject(admin_pb2.UpdateProjectRequest(project=p),
                                 timeout=c.timeout).project
    return _show(args, made, PROJECT_HEADERS, [(made.name, _quota_text(made.quota))])


# ---------------------------------------------------------------- audit


def audit_list(args: argparse.Namespace, c: HasAdmin) -> int:
    rs = list(c.admin.ListAuditRecords(admin_pb2.ListAuditRecordsRequest(
        after_seq=args.after, limit=args.limit, principal=args.principal or ""),
        timeout=c.timeout).records)
    return _show(args, rs, ["SEQ", "TIME", "PRINCIPAL", "PROJECT", "METHOD", "TARGET", "RESULT",
                            "MESSAGE"],
                 [(r.seq, r.time.ToJsonString(), r.principal, r.project, r.method, r.target,
                   r.result_code, r.message) for r in rs])


# ---------------------------------------------------------------- certificates (local)


def certs_init(args: argparse.Namespace, _: Any) -> int:
    try:
        paths = certs.init_lab(Path(args.dir), server_names=args.name or [],
                               client_name=args.client_name, days=args.days, force=args.force)
    except FileExistsError as exc:
        sys.stderr.write(f"vmmgr: {exc}\n")
        return 1
    for p in paths:
        print(p)
    d = Path(args.dir).resolve()
    print(f"\nvmmgrd: tls_cert = \"{d}/server.pem\", tls_key = \"{d}/server-key.pem\", "
          f"tls_ca = \"{d}/ca.pem\"\nvmmgr:  ca = \"{d}/ca.pem\", cert = \"{d}/client.pem\", "
          f"key = \"{d}/client-key.pem\"")
    return 0


def certs_client(args: argparse.Namespace, _: Any) -> int:
    try:
        paths = certs.issue_client(Path(args.dir), args.name, days=args.days, force=args.force)
    except (FileExistsError, FileNotFoundError, ValueError) as exc:
        sys.stderr.write(f"vmmgr: {exc}\n")
        return 1
    for p in paths:
        print(p)
    return 0


def add_commands(top: Any) -> None:
    """Register token, project, audit and certs under the top-level subparsers."""

    def cmd(sub: Any, name: str, fn: Handler, help_: str, local: bool = False
            ) -> argparse.ArgumentParser:
        sp: argparse.ArgumentParser = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(fn=fn, local=local)
        return sp

    tp = top.add_parser("token", help="API tokens (admin)").add_subparsers(
        dest="cmd", required=True)
    sp = cmd(tp, "create", token_create, "create a token; prints its secret once")
    sp.add_argument("name")
    sp.add_argument("--project", default="default")
    sp.add_argument("--role", choices=list(ROLE_NAMES), default="viewer")
    cmd(tp, "list", token_list, "list tokens (never their secrets)")
    cmd(tp, "revoke", token_revoke, "revoke a token").add_argument("id")

    pp = top.add_parser("project", help="projects and quotas (admin)").add_subparsers(
        dest="cmd", required=True)

    def quota_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("name")
        sp.add_argument("--vcpus", type=int, help="vCPU quota (0 = no limit)")
        sp.add_argument("--memory-mib", type=int, help="memory quota in MiB (0 = no limit)")
        sp.add_argument("--gpu", action="append", metavar="MODEL=COUNT",
                        help="whole-GPU quota per model; MODEL=- removes it")

    quota_args(cmd(pp, "create", project_create, "create a project"))
    cmd(pp, "list", project_list, "list projects and their quotas")
    sp = cmd(pp, "set-quota", project_set_quota, "change a project's quotas")
    quota_args(sp)
    sp.add_argument("--clear", action="store_true", help="drop the quotas not given")

    ap = top.add_parser("audit", help="the audit log (admin)").add_subparsers(
        dest="cmd", required=True)
    sp = cmd(ap, "list", audit_list, "audit records, oldest first")
    sp.add_argument("--after", type=int, default=0, help="only records after this seq")
    sp.add_argument("--limit", type=int, default=100)
    sp.add_argument("--principal")

    cp = top.add_parser("certs", help="lab certificates (local files)").add_subparsers(
        dest="cmd", required=True)
    sp = cmd(cp, "init", certs_init, "make a CA, a server and a client certificate", True)
    sp.add_argument("dir")
    sp.add_argument("--name", action="append", help="server DNS name or IP (repeatable)")
    sp.add_argument("--client-name", default="vmmgr-admin")
    sp.add_argument("--days", type=int, default=certs.DEFAULT_DAYS)
    sp.add_argument("--force", action="store_true")
    sp = cmd(cp, "client", certs_client, "issue another client certificate from DIR's CA",
             True)
    sp.add_argument("name")
    sp.add_argument("--dir", required=True)
    sp.add_argument("--days", type=int, default=certs.DEFAULT_DAYS)
    sp.add_argument("--force", action="store_true")
