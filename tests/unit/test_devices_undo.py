"""UndoStack: all-or-nothing multi-step changes."""

from __future__ import annotations

import logging

import pytest

from vmmgr.undo import UndoStack


def test_exception_undoes_in_reverse_and_reraises() -> None:
    done: list[str] = []
    with pytest.raises(RuntimeError, match="boom"), UndoStack("t") as undo:
        undo.push(lambda: done.append("a"), "undo a")
        undo.push(lambda: done.append("b"), "undo b")
        raise RuntimeError("boom")
    assert done == ["b", "a"]


def test_normal_exit_keeps_everything() -> None:
    done: list[str] = []
    with UndoStack() as undo:
        undo.push(lambda: done.append("a"), "undo a")
    assert done == [] and undo.pending == ()


def test_commit_makes_earlier_steps_permanent() -> None:
    done: list[str] = []
    with pytest.raises(ValueError), UndoStack() as undo:
        undo.push(lambda: done.append("a"), "undo a")
        undo.commit()
        undo.push(lambda: done.append("b"), "undo b")
        assert undo.pending == ("undo b",)
        raise ValueError
    assert done == ["b"]


def test_failing_undo_is_logged_and_the_rest_still_run(caplog: pytest.LogCaptureFixture) -> None:
    done: list[str] = []

    def broken() -> None:
        raise OSError("device busy")

    caplog.set_level(logging.ERROR)
    with pytest.raises(KeyError) as err, UndoStack("create vm") as undo:
        undo.push(lambda: done.append("a"), "undo a")
        undo.push(broken, "remove mdev")
        undo.push(lambda: done.append("c"), "undo c")
        raise KeyError("start failed")
    assert done == ["c", "a"]
    assert [f.description for f in undo.failures] == ["remove mdev"]
    assert "remove mdev" in caplog.text and "device busy" in caplog.text
    assert any("remove mdev" in n for n in err.value.__notes__)


def test_cancellation_undoes_too() -> None:
    done: list[str] = []
    with pytest.raises(KeyboardInterrupt), UndoStack() as undo:
        undo.push(lambda: done.append("a"), "undo a")
        raise KeyboardInterrupt
    assert done == ["a"] and undo.rolled_back
