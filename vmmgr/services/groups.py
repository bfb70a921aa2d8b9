"""Placement groups: affinity / anti-affinity, hard (filter) or soft (weigher)."""

from __future__ import annotations

from vmmgr.errors import InvalidArgument
from vmmgr.requests import check_name
from vmmgr.state import Store, repo
from vmmgr.state.models import GroupPolicy, PlacementGroup


class GroupService:
    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, name: str, policy: str, hard: bool) -> PlacementGroup:
        check_name("group.name", name)
        if policy not in (p.value for p in GroupPolicy):
            raise InvalidArgument("group.policy", "must be 'affinity' or 'anti-affinity'")
        with self.store.session() as s:
            return repo.add_group(s, PlacementGroup(name=name, policy=policy, hard=hard))

    def list_groups(self) -> list[tuple[PlacementGroup, list[str]]]:
        with self.store.read_session() as s:
            return [(g, repo.group_members(s, g.name)) for g in repo.list_groups(s)]

    def delete(self, name: str) -> None:
        check_name("name", name)
        with self.store.session() as s:
            repo.delete_group(s, name)
