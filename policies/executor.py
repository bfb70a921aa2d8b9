"""The one executor every policy's plan goes through: a plan becomes one Operation
("policy.NAME"); its stages run one after another and the actions inside a stage (which touch
disjoint hosts) run side by side. Moves respect the migration limits like any other move."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial

from policies.plan import Action, CreateVM, Fence, Move, Plan, PowerOff, RemoveVM, StartVM
from vmmgr.errors import FailedPrecondition, VmmgrError
from vmmgr.requests import VmCreate
from vmmgr.services.migrations import MigrateRequest, MigrationService
from vmmgr.services.operations import OperationContext, Operations
from vmmgr.services.vms import VMService
from vmmgr.state import Store, repo

log = logging.getLogger(__name__)

HostHook = Callable[[str], None]


class ServiceExecutor:
    def __init__(
        self,
        store: Store,
        ops: Operations,
        vms: VMService,
        migrations: MigrationService,
        *,
        fence: HostHook | None = None,
        power_off: HostHook | None = None,
        wait_s: float = 3600.0,
    ) -> None:
        self.store = store
        self.ops = ops
        self.vms = vms
        self.migrations = migrations
        self.fence = fence
        self.power_off = power_off
        self.wait_s = wait_s

    def execute(self, plan: Plan) -> None:
        """Run the plan as an Operation and wait for it (a policy job never overlaps itself)."""
        op = self.ops.submit(
            f"policy.{plan.policy}",
            plan.policy,
            lambda ctx: self._run(ctx, plan),
            message=plan.reason[:200],
        )
        done, _ = self.ops.wait(op.id, self.wait_s)
        if done.state != "succeeded":
            raise FailedPrecondition(
                f"policy {plan.policy} plan {done.state}: {done.error_message}"
            )

    def _run(self, ctx: OperationContext, plan: Plan) -> dict[str, str]:
        stages = [s for s in plan.stages if s]
        done = 0
        for i, stage in enumerate(stages):
            ctx.check_cancelled()
            span = (100 * i / len(stages), 100 * (i + 1) / len(stages))
            with ThreadPoolExecutor(max_workers=max(1, len(stage))) as pool:
                results = list(pool.map(partial(self._do, ctx, span=span), stage))
            done += sum(results)
        return {"policy": plan.policy, "actions": str(done)}

    def _do(self, ctx: OperationContext, action: Action, *, span: tuple[float, float]) -> int:
        if isinstance(action, Move):
            vm = self.vms.get(action.vm_id)
            if vm.host != action.src:
                log.info("skip move of %s: it is on %s now, not %s", vm.name, vm.host, action.src)
                return 0
            mode = "live" if action.live else "cold"
            with self.store.session() as s:
                repo.update_vm(
                    s, vm.id, {"state": "migrating", "state_reason": f"policy move to {action.dst}"}
                )
            self.migrations.run_move(ctx, vm, action.dst, MigrateRequest(mode), span)
        elif isinstance(action, StartVM):
            self.vms.restart_on(action.vm_id, action.host)
        elif isinstance(action, CreateVM):
            self._scale_out(action)
        elif isinstance(action, RemoveVM):
            op = self.vms.delete(action.vm_id)
            self._wait(op.id)
        elif isinstance(action, Fence):
            if self.fence is None:
                raise FailedPrecondition(
                    f"host {action.host} needs fencing but no fence "
                    "command is configured (fence_command)"
                )
            self.fence(action.host)
        elif isinstance(action, PowerOff):
            if self.power_off is None:
                raise FailedPrecondition("no power command is configured (power_command)")
            self.power_off(action.host)
        return 1

    def _scale_out(self, action: CreateVM) -> None:
        with self.store.read_session() as s:
            group = repo.get_scale_group(s, action.group)
        template = VmCreate.from_json(group.template)
        members = len(
            self.vms.list_vms(labels={"vmmgr.scale-group": action.group}, page_size=1000)[0]
        )
        name = f"{action.group}-{members + 1}-{action.request.vm_id[:6]}"
        req = replace(
            template,
            name=name,
            groups=tuple({*template.groups, action.group}),
            labels={**template.labels, "vmmgr.scale-group": action.group},
        )
        self._wait(self.vms.create(req).id)

    def _wait(self, op_id: str) -> None:
        done, finished = self.ops.wait(op_id, self.wait_s)
        if not finished or done.state != "succeeded":
            raise VmmgrError(f"{done.kind} {done.target}: {done.state} {done.error_message}")
