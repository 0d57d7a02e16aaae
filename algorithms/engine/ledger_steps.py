"""The round engine's ledger steps: what the aggregator publishes, relays and checks an update against.

A mixin of :class:`~werkbund.algorithms.engine.aggregator.RoundAggregator`. With a channel that keeps
the ledger (``ledger_enabled``) the aggregator signs its own statements (``round_started``,
``aggregate_published``) and takes an update only when its bytes and sample count match the metadata
its sender published. With a channel that relays (``client/ledger_relay.py``) the round's statements,
the participants' riding on their updates, are appended with one request before the next broadcast,
whose header carries their proofs (``docs/ledger.md``, "Statements riding on updates"). Without a
ledger these steps do nothing but hand the update on.
"""
from __future__ import annotations

from werkbund.algorithms.arrays import UpdateRejected
from werkbund.algorithms.engine.broadcast import sha256_hex as _sha
from werkbund.algorithms.engine.update_aggregation import Update


class LedgerSteps:
    """The ledger's part of the round loop (needs ``channel``, ``definition``, ``aggregation``,
    ``_check_sample_count``, ``_receipts`` and ``_held_record`` of the aggregator)."""

    @property
    def _ledger(self) -> bool:
        return bool(getattr(self.channel, "ledger_enabled", False))

    @property
    def _relayed(self) -> bool:
        """Whether the round's statements go to the ledger in one relay (``client/ledger_relay.py``):
        the participants' ride on their updates, this aggregator's are queued until the relay."""
        return self._ledger and hasattr(self.channel, "flush_relay")

    def _publish(self, type: str, payload: dict) -> None:
        if self._relayed:
            self.channel.queue_entry(type, payload)
        elif self._ledger:
            self.channel.publish_entry(type, payload)

    def _relay(self) -> None:
        """Append what waits to be relayed (the round's statements, this aggregator's and its participants')
        with one request that also audits the log and stores the round record held for it; its receipts ride
        on the broadcast that follows."""
        if self._relayed:
            self._receipts = self.channel.flush_relay(audit=True, record=self._held_record)
            self._held_record = None

    def _record(self, record: dict, last: bool) -> None:
        """A round's record (``record_round``'s parameters): held for the next relay, so that a round's
        bookkeeping is one request, or sent now (the last round's, or without the relay)."""
        if self._relayed and not last:
            self._held_record = record
        else:
            self.channel.record_round(**record)

    def _receipts_header(self) -> dict:
        """The proofs of the last relay, for the participants whose statements it appended."""
        return {"ledger_receipts": self._receipts} if self._receipts else {}

    def _checked_accept(self, number: int):
        """The update into the aggregation stack, after checking its bytes against the metadata published
        on the ledger (the bytes as sent: masked or encrypted under POM 2 and 3)."""
        def take(message) -> None:
            self._check_sample_count(message)
            self.aggregation.accept(Update.of(message))

        if not self._ledger:
            return take

        def handler(message) -> None:
            meta, where = self._published_metadata(message, number)
            # the bytes as received were checked against their frame's sha256 already: not hashed again
            digest = getattr(message, "checked_sha256", "") or _sha(message.payload)
            if digest != meta.get("sha256"):
                raise UpdateRejected(f"update bytes have sha256 {digest}, but {where} "
                                     f"published {meta.get('sha256')}")
            if message.get("n_samples") != meta.get("n_samples"):
                raise UpdateRejected(f"the update claims {message.get('n_samples')} samples, {where} "
                                     f"published {meta.get('n_samples')}")
            why = _not_selected(self.definition.get("selection") or {}, meta)
            if why:
                self.channel.send(message.sender, "skipped", round=number, reason=why)
                raise UpdateRejected(f"skipped by the task's selection: {why}")
            take(message)
        return handler

    def _published_metadata(self, message, number: int) -> tuple[dict, str]:
        """The metadata an update is checked against, and where it is: the signed statement riding on it
        (appended with the round's relay, the sender's key checked now), or its entry on the ledger."""
        statement = message.get("ledger_statement")
        if statement is not None and self._relayed:
            meta = self.channel.check_relayed(message.sender, "update_submitted", number, statement,
                                              message.get("ledger_signature"))
            if isinstance(meta, str):
                raise UpdateRejected(meta)
            self.channel.relay_cosign(message.sender, message.get("ledger_cosign"))
            return meta, "its signed ledger statement"
        meta = self.channel.published_update(message.sender, number, at=message.get("ledger_seq"))
        if meta is None:
            raise UpdateRejected(f"no update_submitted entry for round {number} on the ledger "
                                 "(the metadata must be published before the update)")
        return meta, f"ledger entry {meta['seq']}"


def _not_selected(selection: dict, meta: dict) -> str | None:
    """Why the published metadata puts an update outside the task's selection (None: taken)."""
    n, least = meta.get("n_samples"), selection.get("min_samples")
    if least is not None and (not isinstance(n, int) or n < least):
        return f"{n} training samples, the task asks for at least {least}"
    loss, most = (meta.get("validation") or {}).get("loss"), selection.get("max_validation_loss")
    if most is not None and (not isinstance(loss, (int, float)) or loss > most):
        return f"validation loss {loss} is above the task's limit {most}"
    return None

