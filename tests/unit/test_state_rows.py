"""rows.build: the same instance as the model's constructor, for every table model, and one the
session can write (tests/postgres/test_store.py runs this module against PostgreSQL too)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlmodel import SQLModel
from state_fixtures import *  # noqa: F403  (the store fixtures)

import vmmgr.state.models as models
from vmmgr.state import Store, repo
from vmmgr.state.models import VM, Operation
from vmmgr.state.rows import build

TABLES = sorted(
    (c for c in vars(models).values()
     if isinstance(c, type) and issubclass(c, SQLModel) and hasattr(c, "__table__")),
    key=lambda c: c.__name__,
)
WHEN = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def _required(model: type[SQLModel]) -> dict[str, Any]:
    """A value for each required field, of the field's type."""
    samples = {str: "x", int: 1, datetime: WHEN}
    return {
        name: samples[field.annotation]  # type: ignore[index]
        for name, field in model.model_fields.items()
        if field.is_required()
    }


@pytest.mark.parametrize("model", TABLES, ids=lambda c: c.__name__)
def test_build_equals_the_constructor(model: type[SQLModel]) -> None:
    values = _required(model)
    made, built = model(**values), build(model, values)
    # timestamps and ids from default factories differ per call; everything else is equal
    fresh = {n for n, f in model.model_fields.items() if f.default_factory is not None
             and f.default_factory not in (dict, list)}
    want = {k: v for k, v in made.model_dump().items() if k not in fresh}
    got = {k: v for k, v in built.model_dump().items() if k not in fresh}
    assert got == want and built.model_fields_set == made.model_fields_set
    assert set(built.model_dump()) == set(model.model_fields)
    for name in fresh:
        assert isinstance(getattr(built, name), type(getattr(made, name)))


def test_defaults_are_fresh_objects_not_shared() -> None:
    a, b = build(VM, _required(VM)), build(VM, _required(VM))
    assert a.labels == {} and a.labels is not b.labels and a.id != b.id


def test_unknown_or_missing_fields_are_refused() -> None:
    with pytest.raises(TypeError, match="'colour'"):
        build(VM, {**_required(VM), "colour": "blue"})
    with pytest.raises(TypeError, match="'kind'"):
        build(Operation, {"target": "t"})


def test_a_built_row_is_written_and_read_back_by_the_orm(store: Store) -> None:
    with store.session() as s:
        s.add(build(VM, {"name": "built", "vcpus": 2, "memory_mib": 64, "labels": {"a": "b"}}))
    with store.read_session() as s:
        vm = repo.get_vm_by_name(s, "built")
    assert (vm.vcpus, vm.labels, vm.state, vm.generation) == (2, {"a": "b"}, "pending", 1)
