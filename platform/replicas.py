"""What replicas of `werkbund platform serve` on one database must share, checked when one starts.

Every replica signs ledger entries and checkpoints as "the platform", and members pin one platform
key: a replica that made a key of its own (its ``WERKBUND_HOME`` on another host, no
``WERKBUND_LEDGER_KEY``) would sign half a task's log with a key no verifier accepts. So a replica
refuses to start when the newest checkpoint in the database does not verify with its key.
"""
from __future__ import annotations

import json

from sqlalchemy import select

from werkbund.platform.errors import InvalidState
from werkbund.ledger import entries as E
from werkbund.platform.ledger.store import KEY_ENV, LedgerCheckpoint


def check_ledger_key(service) -> None:
    """Refuse a ledger key other than the one that signed the newest checkpoint (none yet: any key)."""
    with service.db.session() as s:
        row = s.scalar(select(LedgerCheckpoint).order_by(LedgerCheckpoint.id.desc()).limit(1))
    if row is None or E.verify_checkpoint_signature(json.loads(row.checkpoint), row.signature,
                                                    service.ledger.public_key):
        return
    raise InvalidState(f"this platform's ledger key ({service.ledger.public_key}) did not sign the ledger in "
                       f"its database (task {row.task!r}): every replica of the platform signs with the same "
                       f"key; set {KEY_ENV} to the key file the first replica made (or the backup's "
                       "ledger-key.pem) on every replica")
