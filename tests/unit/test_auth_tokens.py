"""Bearer parsing, token verification, the bootstrap admin token."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmmgr.auth.principal import authenticate, bearer_secret, ensure_bootstrap_token
from vmmgr.errors import Unauthenticated
from vmmgr.state import Store, open_store, repo
from vmmgr.state.models import Role


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(None, tmp_path)
    yield s
    s.close()


def test_bearer_secret() -> None:
    assert bearer_secret([]) is None
    assert bearer_secret([("x-other", "1")]) is None
    assert bearer_secret([("authorization", "Bearer abc")]) == "abc"
    assert bearer_secret([("authorization", "bearer   abc  ")]) == "abc"
    for bad in ("abc", "Basic abc", "Bearer", "Bearer " + "x" * 600):
        with pytest.raises(Unauthenticated):
            bearer_secret([("authorization", bad)])


def test_authenticate_roles_and_scoping(store: Store) -> None:
    with store.session() as s:
        _, viewer = repo.create_token(s, "v", "ml", Role.VIEWER.value)
        _, admin = repo.create_token(s, "a", "ml", Role.ADMIN.value)
        revoked_tok, revoked = repo.create_token(s, "r", "ml", Role.OPERATOR.value)
        repo.revoke_token(s, revoked_tok.id)
    who = authenticate(store, [("authorization", f"Bearer {viewer}")], required=True)
    assert (who.name, who.role, who.project) == ("v", Role.VIEWER, "ml")
    who = authenticate(store, [("authorization", f"Bearer {admin}")], required=True)
    assert (who.role, who.project) == (Role.ADMIN, None)  # admins are not project-scoped
    with pytest.raises(Unauthenticated, match="unknown or revoked"):
        authenticate(store, [("authorization", f"Bearer {revoked}")], required=False)
    with pytest.raises(Unauthenticated, match="unknown or revoked"):
        authenticate(store, [("authorization", "Bearer vmm_nope")], required=True)
    with pytest.raises(Unauthenticated, match="requires a bearer token"):
        authenticate(store, [], required=True)
    anon = authenticate(store, [], required=False, anonymous="cert:ops")
    assert (anon.name, anon.role, anon.project) == ("cert:ops", Role.ADMIN, None)


def test_bootstrap_token_file_is_created_once_and_works(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "etc" / "admin.token"
    ensure_bootstrap_token(store, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret = path.read_text().strip()
    who = authenticate(store, [("authorization", f"Bearer {secret}")], required=True)
    assert who.role is Role.ADMIN
    ensure_bootstrap_token(store, path)  # idempotent: no second token
    with store.read_session() as s:
        assert [t.name for t in repo.list_tokens(s)] == ["bootstrap-admin"]


def test_bootstrap_from_a_provisioned_secret_and_revocation_sticks(
    store: Store, tmp_path: Path
) -> None:
    path = tmp_path / "admin.token"
    path.write_text("vmm_provisioned_secret_0123456789\n")
    ensure_bootstrap_token(store, path)
    who = authenticate(store, [("authorization", "Bearer vmm_provisioned_secret_0123456789")],
                       required=True)
    with store.session() as s:
        repo.revoke_token(s, who.token_id)
    ensure_bootstrap_token(store, path)  # a revoked bootstrap token is not revived
    with pytest.raises(Unauthenticated):
        authenticate(store, [("authorization", "Bearer vmm_provisioned_secret_0123456789")],
                     required=True)
    path.write_text("\n")
    with pytest.raises(SystemExit, match="empty"):
        ensure_bootstrap_token(store, path)
