"""POM 3, updates encrypted with CKKS and summed by the aggregator without the key, as a layer around
an inner aggregation (``HomomorphicAggregation``) and the participant's encoding (``HomomorphicParticipant``).

Once per task, at the stack's set-up (all with round -1):

1. ``pom3_setup``: every participant answers with a fresh X25519 key, signed with its identity
   key (``pom3_key``); the aggregator checks the signatures against the registered keys.
2. ``pom3_keys``: the aggregator forwards the announcements. The key holder, the participant with
   the lowest name, makes the CKKS secret context and answers (``pom3_context``) with a context
   without any key for the aggregator and, for every other participant, the secret context
   encrypted to that participant's announced key (``he_ckks.wrap_secret``). The others answer empty.
3. ``pom3_secret`` (one per participant): the aggregator routes the encrypted contexts, which it
   cannot open. ``pom3_confirm`` -> ``pom3_ready`` once a participant holds the key.

Every round: the ``update`` is ``n_samples * (arrays - global)``, flattened, as CKKS ciphertexts of
4096 values each. The aggregator adds them and sends the encrypted sum with the total sample
count (``pom3_decrypt``, sent to the decryptors only); two contributors (the lowest names; the next
two if both vanish) decrypt it, once per round each, divide by the total and send the mean change
back (``pom3_plain``); a participant asked without being named a decryptor answers empty. The two
replies must agree (CKKS decryption is deterministic), else the round fails. So the aggregator
learns the aggregate, as in POM 2, and never one update, as long as it follows the protocol (see
algorithms/privacy/README.md for what this does not cover). The mean goes to the inner layer as in
POM 2 (``private_sum.py``).
"""
from __future__ import annotations

import time

import numpy as np

from werkbund.algorithms.engine.errors import TaskFailure
from werkbund.algorithms.privacy import he_ckks as he
from werkbund.algorithms.privacy.pom_wire import (
    PomError, from_header, own_identity, pack_blobs, registered_identity_keys, to_header, unpack_blobs,
    vector_bytes, vector_from,
)
from werkbund.algorithms.privacy.private_sum import PrivateSumAggregation, PrivateSumParticipant, rejecting
from werkbund.algorithms.privacy.secagg_crypto import new_x25519, x25519_public_bytes

AGREEMENT = 1e-6   # relative tolerance between two participants' decryptions of the same sum
DECRYPTORS = 2     # contributors asked to decrypt each round's sum (they check each other)


class HomomorphicAggregation(PrivateSumAggregation):
    """POM 3 on the aggregator: a context without keys, the sum of ciphertexts, two decryptions of it."""

    privacy_mode = 3
    context = None

    def setup(self) -> None:
        super().setup()
        roster = sorted(self.agg.active)
        if len(roster) < 2:
            raise TaskFailure("homomorphic encryption (POM 3) needs at least 2 participants")
        holder, task = roster[0], self.channel.task
        identity = registered_identity_keys(self.channel, roster, self._keys)
        announced: dict[str, dict] = {}

        def on_key(message):
            ann = he.verify_key(from_header(message.get("announcement")), task, roster, identity)
            if ann["sender"] != message.sender:
                raise PomError(f"{message.sender!r} sent the key announcement of {ann['sender']!r}")
            announced[message.sender] = ann

        self.agg.exchange("pom3_setup", expect="pom3_key", number=-1, roster=roster, holder=holder,
                          handler=rejecting(on_key))
        if holder not in announced:
            raise TaskFailure(f"POM 3: the key holder {holder!r} announced no valid key; the task cannot be keyed")
        self.context, wrapped = None, {}

        def on_context(message):
            if message.sender != holder:
                return
            parts, recipients = unpack_blobs(message.payload), message.get("recipients")
            if not isinstance(recipients, list) or sorted(recipients) != sorted(set(announced) - {holder}):
                raise PomError(f"the key holder encrypted the key for {recipients}, not for every other "
                               f"participant that announced a key ({sorted(set(announced) - {holder})})")
            if len(parts) != len(recipients) + 1:
                raise PomError("the key holder's answer has the wrong number of parts")
            self.context = he.load_context(parts[0], secret=False)
            wrapped.update(zip(recipients, parts[1:]))

        self.agg.exchange("pom3_keys", expect="pom3_context", number=-1, holder=holder,
                          announcements=to_header([announced[p] for p in sorted(announced)]),
                          handler=rejecting(on_context))
        if self.context is None:
            raise TaskFailure(f"POM 3: the key holder {holder!r} sent no usable public context")
        for recipient, blob in wrapped.items():
            self.channel.send(recipient, "pom3_secret", blob, round=-1, holder=holder)
        ready = self.agg.exchange("pom3_confirm", expect="pom3_ready", number=-1)
        self.agg.progress.message(f"POM 3: CKKS key made by {holder} and shared with "
                                  f"{', '.join(p for p in ready.accepted if p != holder) or 'nobody'}; "
                                  "the aggregator holds a context without keys")

    def begin_round(self, number, global_weights):
        header = super().begin_round(number, global_weights)
        self._n = int(self._global_flat.size)
        self._sum, self._total, self._contributors = None, 0, []
        self.stats = {"bytes_in": 0, "add_s": 0.0}
        return header

    def accept(self, update) -> None:
        rejecting(self._take)(update)

    def _take(self, update) -> None:
        n = self._n_samples(update)
        started = time.perf_counter()
        cts = he.read_ciphertexts(self.context, unpack_blobs(update.payload), self._n)
        self._sum = he.add_into(self._sum, cts)
        self.stats["add_s"] += time.perf_counter() - started
        self.stats["bytes_in"] += len(update.payload)
        self._total += n
        self._contributors.append(update.sender)

    def end_round(self, number, collected) -> None:
        if len(self._contributors) < 2:
            raise TaskFailure(f"round {number}: only {len(self._contributors)} encrypted update(s) "
                              f"({', '.join(self._contributors) or 'none'}); decrypting the sum of fewer than "
                              "2 would reveal a participant's update")
        started = time.perf_counter()
        plain: dict[str, np.ndarray] = {}
        summed = pack_blobs([ct.serialize() for ct in self._sum])
        candidates = sorted(self._contributors)
        while not plain and candidates:  # the next DECRYPTORS contributors, if all before them vanished
            decryptors, candidates = candidates[:DECRYPTORS], candidates[DECRYPTORS:]

            def on_plain(message, decryptors=decryptors):
                if message.sender in decryptors:
                    plain[message.sender] = vector_from(message.payload, np.float64, self._n)

            self.agg.exchange("pom3_decrypt", summed, expect="pom3_plain", number=number, total=self._total,
                              contributors=sorted(self._contributors), decryptors=decryptors,
                              handler=rejecting(on_plain), among=decryptors, minimum=0)
        if not plain:
            raise TaskFailure(f"round {number}: no participant decrypted the aggregate")
        names = sorted(plain)
        reference = plain[names[0]]
        tolerance = AGREEMENT * (1.0 + float(np.max(np.abs(reference), initial=0.0)))
        for name in names[1:]:
            gap = float(np.max(np.abs(plain[name] - reference), initial=0.0))
            if gap > tolerance:
                raise TaskFailure(f"round {number}: {name} and {names[0]} decrypted different aggregates "
                                  f"(they differ by {gap:.3g}); refusing both")
        self.stats.update(contributors=sorted(self._contributors), decrypted_by=names, bytes_out=len(summed),
                          decrypt_stage_s=time.perf_counter() - started)
        self._hand_over(number, reference * self._total, self._total, self._contributors)
        self.inner.end_round(number, collected)


class HomomorphicParticipant(PrivateSumParticipant):
    """POM 3 on the participant: holds the task's CKKS key, encrypts its update, decrypts a sum when asked."""

    privacy_mode = 3
    kinds = frozenset({"pom3_setup", "pom3_keys", "pom3_secret", "pom3_confirm", "pom3_decrypt"})

    def __init__(self, participant):
        super().__init__(participant)
        self.context = None
        self._x_sk = None
        self._holder: dict | None = None
        self._decrypted: set[int] = set()
        self._length: int | None = None

    def handle(self, message) -> None:
        task, me = self.channel.task, self.channel.name
        if message.kind == "pom3_setup":
            self.roster, self.holder = list(message.get("roster") or []), message.get("holder")
            if me not in self.roster or self.holder != min(self.roster):
                raise PomError(f"the POM 3 setup names roster {self.roster} and key holder {self.holder!r}; "
                               "the holder must be the lowest name on a roster that includes this participant")
            self._x_sk = new_x25519()
            ann = he.sign_key(own_identity(self.channel), task, me, x25519_public_bytes(self._x_sk))
            self.channel.send("pom3_key", round=-1, announcement=to_header(ann))
        elif message.kind == "pom3_keys":
            self._on_keys(message, task, me)
        elif message.kind == "pom3_secret":
            if self._holder is None:
                raise PomError("a CKKS key arrived before the key announcements")
            secret = he.unwrap_secret(message.payload, self._x_sk, self._holder["x_pk"], task, self.holder, me)
            self.context = he.load_context(secret, secret=True)
        elif message.kind == "pom3_confirm":
            if self.context is None:
                raise PomError(f"no CKKS key arrived from the key holder {self.holder!r}")
            self.channel.send("pom3_ready", round=-1)
        elif message.kind == "pom3_decrypt":
            self._on_decrypt(message)

    def _on_keys(self, message, task: str, me: str) -> None:
        identity = registered_identity_keys(self.channel, self.roster, self._keys)
        anns = {}
        for raw in from_header(message.get("announcements")) or []:
            ann = he.verify_key(raw, task, self.roster, identity)
            anns[ann["sender"]] = ann
        if anns.get(me, {}).get("x_pk") != x25519_public_bytes(self._x_sk):
            raise PomError("the forwarded key announcements do not carry this participant's key")
        if self.holder not in anns:
            raise PomError(f"the forwarded key announcements lack the key holder {self.holder!r}")
        self._holder = anns[self.holder]
        if me != self.holder:
            self.channel.send("pom3_context", round=-1)
            return
        self.context = he.new_secret_context()
        secret = he.secret_context_bytes(self.context)
        others = sorted(p for p in anns if p != me)
        blobs = [he.public_context_bytes(self.context)]
        blobs += [he.wrap_secret(secret, self._x_sk, anns[p]["x_pk"], task, me, p) for p in others]
        self.channel.send("pom3_context", pack_blobs(blobs), round=-1, recipients=others)

    def encode(self, message, update, header) -> tuple[bytes, dict]:
        if self.context is None:
            raise PomError("this participant holds no CKKS key for the task")
        started = time.perf_counter()
        change, n = self._change(message, update, header)
        self._length = int(change.size)
        body = pack_blobs(he.encrypt(self.context, change * float(n), n_summands=len(self.roster)))
        self.stats = {"protect_s": time.perf_counter() - started, "bytes": len(body)}
        return body, header

    def _on_decrypt(self, message) -> None:
        number, total, contributors = message.get("round"), message.get("total"), message.get("contributors")
        if self.context is None or self._length is None:
            raise PomError("nothing to decrypt: this participant sent no encrypted update")
        if number in self._decrypted:
            raise PomError(f"round {number}: the aggregate was already decrypted once; refusing a second request")
        if not isinstance(contributors, list) or len(set(contributors)) < 2 or self.channel.name not in contributors:
            raise PomError("refusing to decrypt a sum that does not name at least 2 contributors including "
                           "this participant")
        if not isinstance(total, int) or isinstance(total, bool) or total <= 0:
            raise PomError(f"the total sample count {total!r} is not a positive integer")
        if self.channel.name not in (message.get("decryptors") or []):
            self.channel.send("pom3_plain", round=number)  # another contributor decrypts this round
            return
        self._decrypted.add(number)
        started = time.perf_counter()
        mean = he.decrypt(self.context, unpack_blobs(message.payload), self._length) / float(total)
        self.stats["decrypt_s"] = time.perf_counter() - started
        self.channel.send("pom3_plain", vector_bytes(mean, np.float64), round=number)
