"""vm: one index on (host, vcpus, memory_mib, disk_gib) replaces the one on host

Placement sums every VM's resources per host on each create. With the host-only index that
sum read every VM row (3.3 ms per create at 10,000 VMs on SQLite); the covering index answers
it from the index alone, and still serves every lookup by host.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 03:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        'ix_vm_host_usage', 'vm', ['host', 'vcpus', 'memory_mib', 'disk_gib'], unique=False
    )
    op.drop_index(op.f('ix_vm_host'), table_name='vm')


def downgrade() -> None:
    op.create_index(op.f('ix_vm_host'), 'vm', ['host'], unique=False)
    op.drop_index('ix_vm_host_usage', table_name='vm')
