"""Configuration and last results of periodic policies, and elastic scale groups."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from vmmgr.errors import AlreadyExists, InvalidArgument
from vmmgr.state.models import PolicyConfig, ScaleGroup
from vmmgr.state.repo._common import apply_changes, get_or_404, insert
from vmmgr.state.types import utcnow

_POLICY_SETTINGS = ("enabled", "interval_s", "params")
_SCALE_UPDATABLE = frozenset(ScaleGroup.model_fields) - {"name"}


def upsert_policy_config(
    session: Session,
    name: str,
    *,
    enabled: bool | None = None,
    interval_s: float | None = None,
    params: Mapping[str, Any] | None = None,
) -> PolicyConfig:
    """Create or change a policy's settings; fields left None keep their value."""
    if interval_s is not None and interval_s <= 0:
        raise InvalidArgument("interval_s", "must be positive")
    cfg = session.get(PolicyConfig, name)
    if cfg is None:
        cfg = PolicyConfig(name=name)
        session.add(cfg)
    if enabled is not None:
        cfg.enabled = enabled
    if interval_s is not None:
        cfg.interval_s = interval_s
    if params is not None:
        cfg.params = dict(params)
    session.flush()
    return cfg


def get_policy_config(session: Session, name: str) -> PolicyConfig:
    return get_or_404(session, PolicyConfig, name, "policy")


def list_policy_configs(session: Session) -> list[PolicyConfig]:
    return list(session.exec(select(PolicyConfig).order_by(col(PolicyConfig.name))))


def record_policy_run(
    session: Session, name: str, result: Mapping[str, Any], *, at: datetime | None = None
) -> PolicyConfig:
    cfg = get_policy_config(session, name)
    cfg.last_run = at or utcnow()
    cfg.last_result = dict(result)
    session.flush()
    return cfg


def _check_sizes(g: ScaleGroup) -> None:
    if g.min_size < 0:
        raise InvalidArgument("min_size", "must not be negative")
    if g.max_size < g.min_size:
        raise InvalidArgument("max_size", f"{g.max_size} is below min_size {g.min_size}")
    if not g.min_size <= g.desired <= g.max_size:
        raise InvalidArgument("desired", f"{g.desired} is outside {g.min_size}..{g.max_size}")
    if g.cooldown_s < 0:
        raise InvalidArgument("cooldown_s", "must not be negative")


def add_scale_group(session: Session, group: ScaleGroup) -> ScaleGroup:
    _check_sizes(group)
    return insert(
        session,
        group,
        duplicate=lambda: AlreadyExists(f"scale group {group.name!r} exists", field="name"),
    )


def get_scale_group(session: Session, name: str) -> ScaleGroup:
    return get_or_404(session, ScaleGroup, name, "scale group")


def list_scale_groups(session: Session) -> list[ScaleGroup]:
    return list(session.exec(select(ScaleGroup).order_by(col(ScaleGroup.name))))


def update_scale_group(session: Session, name: str, changes: Mapping[str, Any]) -> ScaleGroup:
    group = get_scale_group(session, name)
    candidate = ScaleGroup.model_validate(group.model_dump() | dict(changes))
    apply_changes(candidate, changes, _SCALE_UPDATABLE)
    _check_sizes(candidate)  # before touching the tracked row: a refused update changes nothing
    apply_changes(group, changes, _SCALE_UPDATABLE)
    session.flush()
    return group


def delete_scale_group(session: Session, name: str) -> ScaleGroup:
    group = get_scale_group(session, name)
    session.delete(group)
    session.flush()
    return group
