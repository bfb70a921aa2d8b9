"""PolicyService servicer: the policy runtime (policies/, wired by the daemon) behind a small
protocol, and scaling groups in the store."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypeAlias

import grpc

from vmmgr.api import convert
from vmmgr.api.errors import servicer
from vmmgr.errors import InvalidArgument
from vmmgr.requests import check_name
from vmmgr.services.groups import GroupService
from vmmgr.services.operations import Operations
from vmmgr.services.vms import VMService
from vmmgr.state import Store, repo
from vmmgr.state.models import ScaleGroup
from vmmgr.v1 import policy_pb2, policy_pb2_grpc

Ctx: TypeAlias = grpc.ServicerContext
METRICS = ("cpu", "gpu")


class PolicyControl(Protocol):
    """What the API needs of policies.runtime.PolicyRuntime."""

    def names(self) -> list[str]: ...
    def settings(self, name: str) -> Any: ...  # .enabled, .interval_s
    def stats(self, name: str) -> Any: ...  # .last_run, .last_reason, .last_error
    def reconfigure(self, name: str, enabled: bool, interval_s: float) -> None: ...
    def plan(self, name: str) -> tuple[Any, float | None, float | None]: ...
    def run_once(self, name: str) -> Any: ...
    def is_leader(self) -> bool: ...


def plan_actions(plan: Any) -> list[policy_pb2.PlanAction]:
    """A policies.plan.Plan as protos (actions are plain dataclasses: read by field name)."""
    out = []
    for group, stage in enumerate(plan.stages):
        for a in stage:
            target = getattr(a, "dst", "") or getattr(a, "host", "")
            out.append(
                policy_pb2.PlanAction(
                    action=type(a).__name__.lower(),
                    vm_id=getattr(a, "vm_id", ""),
                    source_host=getattr(a, "src", ""),
                    target_host=target,
                    reason=getattr(a, "group", ""),
                    group=group,
                )
            )
    return out


def scale_group(g: ScaleGroup, members: Sequence[str]) -> policy_pb2.ScaleGroup:
    return policy_pb2.ScaleGroup(
        name=g.name,
        template_vm_name=str(g.template.get("name", "")),
        min_size=g.min_size,
        max_size=g.max_size,
        desired_size=g.desired,
        metric=g.metric,
        target=g.target,
        cooldown_seconds=g.cooldown_s,
        members=list(members),
    )


@servicer
class PolicyServicer(policy_pb2_grpc.PolicyServiceServicer):
    def __init__(
        self,
        runtime: PolicyControl,
        store: Store,
        ops: Operations,
        vms: VMService,
        groups: GroupService,
    ) -> None:
        self.runtime = runtime
        self.store = store
        self.ops = ops
        self.vms = vms
        self.groups = groups

    def _policy(self, name: str) -> policy_pb2.Policy:
        settings, stats = self.runtime.settings(name), self.runtime.stats(name)
        msg = policy_pb2.Policy(
            name=name,
            enabled=settings.enabled,
            interval_seconds=settings.interval_s,
            last_result=stats.last_error or stats.last_reason or "",
            leader=self.runtime.is_leader(),
        )
        if stats.last_run:
            msg.last_run.FromSeconds(int(stats.last_run))
        return msg

    def ListPolicies(
        self, request: policy_pb2.ListPoliciesRequest, context: Ctx
    ) -> policy_pb2.ListPoliciesResponse:
        return policy_pb2.ListPoliciesResponse(
            policies=[self._policy(n) for n in self.runtime.names()]
        )

    def GetPolicy(
        self, request: policy_pb2.GetPolicyRequest, context: Ctx
    ) -> policy_pb2.GetPolicyResponse:
        return policy_pb2.GetPolicyResponse(policy=self._policy(request.name))

    def UpdatePolicy(
        self, request: policy_pb2.UpdatePolicyRequest, context: Ctx
    ) -> policy_pb2.UpdatePolicyResponse:
        current = self.runtime.settings(request.name)
        enabled = request.enabled if request.HasField("enabled") else current.enabled
        interval = (
            request.interval_seconds if request.HasField("interval_seconds") else current.interval_s
        )
        if not 1 <= interval <= 86400:
            raise InvalidArgument("interval_seconds", "must be between 1 and 86400")
        if request.params:
            raise InvalidArgument(
                "params",
                "policy parameters are set in the daemon's config "
                "file; changing them through the API is planned",
            )
        self.runtime.reconfigure(request.name, enabled, interval)
        with self.store.session() as s:
            repo.upsert_policy_config(s, request.name, enabled=enabled, interval_s=interval)
        return policy_pb2.UpdatePolicyResponse(policy=self._policy(request.name))

    def PlanPolicy(
        self, request: policy_pb2.PlanPolicyRequest, context: Ctx
    ) -> policy_pb2.PlanPolicyResponse:
        plan, before, after = self.runtime.plan(request.name)
        return policy_pb2.PlanPolicyResponse(
            actions=plan_actions(plan),
            score_before=before or 0.0,
            score_after=after or 0.0,
            summary=("recommend only: " if plan.recommend_only else "") + plan.reason,
        )

    def RunPolicy(
        self, request: policy_pb2.RunPolicyRequest, context: Ctx
    ) -> policy_pb2.RunPolicyResponse:
        self.runtime.settings(request.name)  # NOT_FOUND before anything starts

        def job(ctx: object) -> dict[str, str]:
            outcome = self.runtime.run_once(request.name)
            if outcome is None:
                return {"result": "not the leader: another vmmgrd runs the policies"}
            plan = outcome.plan
            return {
                "actions": str(len(plan.actions())),
                "reason": plan.reason,
                "recommend_only": str(plan.recommend_only).lower(),
            }

        op = self.ops.submit("policy.run", request.name, job)
        return policy_pb2.RunPolicyResponse(operation=convert.operation(op))

    # ------------------------------------------------------------------ scaling groups

    def _members(self, name: str) -> list[str]:
        rows, _ = self.vms.list_vms(labels={"vmmgr.scale-group": name}, page_size=1000)
        return [r.name for r in rows]

    def CreateScaleGroup(
        self, request: policy_pb2.CreateScaleGroupRequest, context: Ctx
    ) -> policy_pb2.CreateScaleGroupResponse:
        g = request.group
        check_name("group.name", g.name)
        metric = g.metric or "cpu"
        if metric not in METRICS:
            raise InvalidArgument("group.metric", f"must be one of {', '.join(METRICS)}")
        if not 0 < (g.target or 0.7) <= 1:
            raise InvalidArgument("group.target", "must be within (0, 1]")
        if g.max_size < max(g.min_size, 1):
            raise InvalidArgument("group.max_size", "must be at least min_size and 1")
        template = self.vms.get(g.template_vm_name)  # NOT_FOUND names the template
        if g.name not in [x.name for x, _ in self.groups.list_groups()]:
            self.groups.create(g.name, "anti-affinity", hard=False)  # members spread, softly
        row = ScaleGroup(
            name=g.name,
            template=template.spec,
            min_size=g.min_size,
            max_size=g.max_size,
            desired=g.min_size,
            metric=metric,
            target=g.target or 0.7,
            cooldown_s=g.cooldown_seconds or 300.0,
        )
        with self.store.session() as s:
            row = repo.add_scale_group(s, row)
        return policy_pb2.CreateScaleGroupResponse(group=scale_group(row, []))

    def GetScaleGroup(
        self, request: policy_pb2.GetScaleGroupRequest, context: Ctx
    ) -> policy_pb2.GetScaleGroupResponse:
        with self.store.read_session() as s:
            row = repo.get_scale_group(s, request.name)
        return policy_pb2.GetScaleGroupResponse(group=scale_group(row, self._members(row.name)))

    def ListScaleGroups(
        self, request: policy_pb2.ListScaleGroupsRequest, context: Ctx
    ) -> policy_pb2.ListScaleGroupsResponse:
        with self.store.read_session() as s:
            rows = repo.list_scale_groups(s)
        return policy_pb2.ListScaleGroupsResponse(
            groups=[scale_group(r, self._members(r.name)) for r in rows]
        )

    def UpdateScaleGroup(
        self, request: policy_pb2.UpdateScaleGroupRequest, context: Ctx
    ) -> policy_pb2.UpdateScaleGroupResponse:
        changes: dict[str, object] = {}
        if request.HasField("min_size"):
            changes["min_size"] = request.min_size
        if request.HasField("max_size"):
            changes["max_size"] = request.max_size
        if request.HasField("target"):
            if not 0 < request.target <= 1:
                raise InvalidArgument("target", "must be within (0, 1]")
            changes["target"] = request.target
        with self.store.session() as s:
            row = repo.update_scale_group(s, request.name, changes)
        return policy_pb2.UpdateScaleGroupResponse(group=scale_group(row, self._members(row.name)))

    def DeleteScaleGroup(
        self, request: policy_pb2.DeleteScaleGroupRequest, context: Ctx
    ) -> policy_pb2.DeleteScaleGroupResponse:
        with self.store.session() as s:
            repo.delete_scale_group(s, request.name)
        return policy_pb2.DeleteScaleGroupResponse()
