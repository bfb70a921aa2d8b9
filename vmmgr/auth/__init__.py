"""Authentication (bearer tokens), the per-RPC permission table, project scoping, quotas."""

from vmmgr.auth.permissions import MUTATING, PERMISSIONS, allows, is_public, required_role
from vmmgr.auth.principal import Principal, authenticate, bearer_secret, ensure_bootstrap_token
from vmmgr.auth.quota import Demand, check_quota, violations
from vmmgr.auth.scope import scope_request, scope_response

__all__ = [
    "MUTATING",
    "PERMISSIONS",
    "Demand",
    "Principal",
    "allows",
    "authenticate",
    "bearer_secret",
    "check_quota",
    "ensure_bootstrap_token",
    "is_public",
    "required_role",
    "scope_request",
    "scope_response",
    "violations",
]
