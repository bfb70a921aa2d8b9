"""Table-model instances made without SQLModel's per-field constructor, for the hot paths.

SQLModel's ``__init__`` sets every field through pydantic's and SQLAlchemy's attribute hooks
and asks ``inspect.signature`` about each default factory: about 60 µs for a VM row, and a VM
create makes eight rows. ``build`` makes the instance the way SQLAlchemy makes the rows it
loads (its class manager, then the attribute dict) and applies the model's defaults itself.
SQLModel does not validate table models either, so the result is the same object; it can be
read, handed around, and given to ``session.add`` like any new instance.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from sqlalchemy.orm import configure_mappers
from sqlalchemy.orm.attributes import manager_of_class
from sqlmodel import SQLModel

T = TypeVar("T", bound=SQLModel)

_Default = tuple[str, Any, Callable[[], Any] | None]  # field, value, factory


class _Shape:
    def __init__(self, model: type[SQLModel]) -> None:
        # The constructor configures the mappers on first use; new_instance does not, and an
        # unconfigured mapper's attributes cannot be read (a first build before any query).
        configure_mappers()
        fields = model.model_fields
        self.names = frozenset(fields)
        self.required = frozenset(n for n, f in fields.items() if f.is_required())
        self.defaults: tuple[_Default, ...] = tuple(
            (n, f.default, f.default_factory)  # type: ignore[misc]
            for n, f in fields.items()
            if not f.is_required()
        )


_SHAPES: dict[type[SQLModel], _Shape] = {}


def build(model: type[T], values: Mapping[str, Any]) -> T:
    """``model(**values)``, faster. Unknown keys are an error (the constructor drops them),
    and so is a missing required field (the constructor would leave it unset)."""
    shape = _SHAPES.get(model)
    if shape is None:
        shape = _SHAPES[model] = _Shape(model)
    if not (shape.names.issuperset(values) and shape.required.issubset(values)):
        wrong = sorted((set(values) - shape.names) | (shape.required - set(values)))
        raise TypeError(f"{model.__name__}: unknown or missing field {wrong[0]!r}")
    obj: T = manager_of_class(model).new_instance()
    data = obj.__dict__
    for name, value, factory in shape.defaults:
        if name not in values:
            data[name] = factory() if factory is not None else copy.copy(value)
    data.update(values)
    object.__setattr__(obj, "__pydantic_fields_set__", set(values))
    return obj
