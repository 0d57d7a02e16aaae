"""POM 3, updates encrypted with CKKS, checked by the aggregator without the key and decrypted only as
a sum that the decryptors verify on the ledger, as a layer around an inner aggregation
(``HomomorphicAggregation``) and the participant's encoding (``HomomorphicParticipant``).

Once per task, at the stack's set-up (all with round -1):

1. ``pom3_setup``: every participant answers with a fresh X25519 key, signed with its identity
   key (``pom3_key``); the aggregator checks the signatures against the registered keys.
2. ``pom3_keys``: the aggregator forwards the announcements. The key holder, the participant with
   the lowest name, makes a fresh CKKS secret context for the task and answers (``pom3_context``)
   with a context without any key for the aggregator and, for every other participant, the secret
   context encrypted to that participant's announced key (``ckks.encryption.wrap_secret``). The others
   answer empty.
3. ``pom3_secret`` (one per participant): the aggregator routes the encrypted contexts, which it
   cannot open. ``pom3_confirm`` -> ``pom3_ready`` once a participant holds the key.

Every round: the ``update`` is ``n_samples * (arrays - global)``, flattened, as CKKS ciphertexts of
4096 values each; the engine puts the sha256 of exactly these bytes on the ledger
(``update_submitted``) before sending them. The aggregator checks each update's ciphertexts (count,
size, scale, level) without decrypting, commits to the round's sum on the ledger (``sum_committed``:
the contributors and their total sample count) and forwards the contributors' ciphertexts as they
were sent (``pom3_decrypt``, to the decryptors only). Two contributors (the lowest names; the next
two if both vanish) each decrypt at most once per round, and only a round in which they sent an
encrypted update themselves (their own record, not a field the aggregator sets), and only if:
the contributors are the ones of the first ``sum_committed`` entry of that round, at least 2, they
included; each forwarded update has the sha256 its author put on the ledger for that round (their
own: the bytes they sent); the total is the sum of the sample counts on the ledger. They add the
ciphertexts themselves, decrypt, add noise flooding (``ckks.encryption.decrypt_sum``), divide by the total
and send the mean change back (``pom3_plain``); every other request is refused with the check it
failed (``test_a_malicious_aggregator_gets_no_decryption_but_the_committed_sum_once_per_round`` in
tests/unit/test_pom3_attacks.py). The two replies must agree within the flooding noise, else the round
fails. The mean goes to the inner layer as in POM 2 (``private_sum.py``).
What this covers and what it does not: algorithms/privacy/README.md.
"""
from __future__ import annotations

import base64
import hashlib
import time
from pathlib import Path

import numpy as np

from werkbund.algorithms.engine.errors import TaskFailure
from werkbund.algorithms.engine.state_files import read_json, write_json, write_private
from werkbund.algorithms.privacy.ckks import encryption as he
from werkbund.algorithms.privacy.wire import (
    PomError, from_header, own_identity, pack_blobs, registered_identity_keys, to_header, unpack_blobs,
    vector_bytes, vector_from,
)
from werkbund.algorithms.privacy.private_sum import PrivateSumAggregation, PrivateSumParticipant, rejecting
from werkbund.algorithms.privacy.secagg.crypto import (
    aead_decrypt, aead_encrypt, hkdf, new_x25519, x25519_public_bytes,
)

AGREEMENT = 1e-6   # relative tolerance between two participants' decryptions of the same sum (plus the flooding)
DECRYPTORS = 2     # contributors asked to decrypt each round's sum (they check each other)
COMMIT = "sum_committed"  # the ledger entry that fixes a round's sum before anyone decrypts it
STATE_FILE = "pom3-state.json"  # in the participant's state_dir: roster, holder, what it encrypted and decrypted
KEY_FILE = "pom3-key.bin"       # in the participant's state_dir: the task's CKKS key, encrypted (``_at_rest``)
AT_REST = b"werkbund-pom3-key-at-rest"


def decryptions_bound(definition: dict, roster) -> int:
    """How many decryptions a task's key can see at most: each participant decrypts once per round."""
    return max(1, int(definition.get("rounds") or 1)) * max(1, len(roster))


class HomomorphicAggregation(PrivateSumAggregation):
    """POM 3 on the aggregator: a context without keys, checked ciphertexts, the sum decrypted by two others."""

    privacy_mode = 3
    context = None

    def checkpoint_state(self) -> dict:
        """The context without keys and the roster it was made for: a resumed aggregator keeps the task's key
        (the participants keep theirs), so updates encrypted before the crash still add up with the rest."""
        state = self.inner.checkpoint_state()
        if self.context is not None:
            state["pom3"] = {"context": base64.b64encode(he.public_context_bytes(self.context)).decode("ascii"),
                             "roster": list(self._roster)}
        return state

    def restore_checkpoint(self, state: dict) -> None:
        self.inner.restore_checkpoint(state)
        kept = state.get("pom3")
        if isinstance(kept, dict):
            self.context = he.load_context(base64.b64decode(kept["context"]), secret=False)
            self._roster = [str(p) for p in kept["roster"]]

    def setup(self) -> None:
        if self.context is not None:  # resumed: the task's key stays the one the participants hold
            super().setup()
            self.agg.progress.message(f"POM 3: kept the task's CKKS context (no keys) from the checkpoint; the "
                                      f"participants keep the key {min(self._roster)} made")
            return
        super().setup()
        roster = sorted(self.agg.active)
        if len(roster) < 2:
            raise TaskFailure("homomorphic encryption (POM 3) needs at least 2 participants")
        if not getattr(self.channel, "ledger_enabled", False):
            raise TaskFailure("homomorphic encryption (POM 3) needs the ledger: the decryptors check the sum against "
                              "it, so the task creator must have an identity key (`werkbund register` makes one)")
        holder, task = roster[0], self.channel.task
        self._roster = roster
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
        self._payloads: dict[str, bytes] = {}
        self._total = 0
        self.stats = {"bytes_in": 0, "check_s": 0.0}
        return header

    def accept(self, update) -> None:
        rejecting(self._take)(update)

    def _take(self, update) -> None:
        n = self._n_samples(update)
        started = time.perf_counter()
        he.read_ciphertexts(self.context, unpack_blobs(update.payload), self._n)  # readable and addable
        self.stats["check_s"] += time.perf_counter() - started
        self.stats["bytes_in"] += len(update.payload)
        self._payloads[update.sender] = bytes(update.payload)
        self._total += n

    def end_round(self, number, collected) -> None:
        contributors = sorted(self._payloads)
        if len(contributors) < 2:
            raise TaskFailure(f"round {number}: only {len(contributors)} encrypted update(s) "
                              f"({', '.join(contributors) or 'none'}); decrypting the sum of fewer than "
                              "2 would reveal a participant's update")
        started = time.perf_counter()
        self.channel.publish_entry(COMMIT, {"round": number, "contributors": contributors, "n_samples": self._total})
        forwarded = pack_blobs([self._payloads[name] for name in contributors])
        plain: dict[str, np.ndarray] = {}
        candidates = list(contributors)
        while not plain and candidates:  # the next DECRYPTORS contributors, if all before them vanished
            decryptors, candidates = candidates[:DECRYPTORS], candidates[DECRYPTORS:]

            def on_plain(message, decryptors=decryptors):
                if message.sender in decryptors:
                    plain[message.sender] = vector_from(message.payload, np.float64, self._n)

            self.agg.exchange("pom3_decrypt", forwarded, expect="pom3_plain", number=number, total=self._total,
                              contributors=contributors, decryptors=decryptors,
                              handler=rejecting(on_plain), among=decryptors, minimum=0)
        if not plain:
            raise TaskFailure(f"round {number}: no participant decrypted the aggregate")
        names = sorted(plain)
        reference = plain[names[0]]
        noise = he.flooding_sigma(len(contributors), decryptions_bound(self.agg.definition, self._roster))
        tolerance = AGREEMENT * (1.0 + float(np.max(np.abs(reference), initial=0.0))) + 20 * noise / self._total
        for name in names[1:]:
            gap = float(np.max(np.abs(plain[name] - reference), initial=0.0))
            if gap > tolerance:
                raise TaskFailure(f"round {number}: {name} and {names[0]} decrypted different aggregates "
                                  f"(they differ by {gap:.3g}); refusing both")
        mean = np.mean([plain[name] for name in names], axis=0)
        self.stats.update(contributors=contributors, decrypted_by=names, bytes_out=len(forwarded) * len(names),
                          decrypt_stage_s=time.perf_counter() - started)
        self._hand_over(number, mean * self._total, self._total, contributors)
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
        self._length: int | None = None
        self._sent: dict[int, tuple[str, int]] = {}   # round -> (sha256 of the bytes sent, sample count)
        self._decrypted: set[int] = set()
        self._commits: dict[int, dict] = {}           # round -> the first sum_committed entry's payload
        self._ledger_read = 0
        self._restored = False

    # -- what survives a restart: state_dir/STATE_FILE and KEY_FILE (0600, replaced atomically)
    def _folder(self) -> Path | None:
        folder = getattr(self.part, "state_dir", None)
        if folder is None or getattr(self.channel, "restartable", True) is False:
            return None
        return Path(folder)

    def _at_rest(self) -> tuple[bytes, bytes]:
        """The AES-256-GCM key (and associated data) the CKKS key is kept under on disk: derived from this
        user's identity key (an Ed25519 signature is deterministic), so the file alone opens nothing."""
        label = AT_REST + b"\0" + self.channel.task.encode() + b"\0" + self.channel.name.encode()
        return hkdf(own_identity(self.channel).sign(label), AT_REST), label

    def _save(self, key: bool = False) -> None:
        folder = self._folder()
        if folder is None:
            return
        if key:
            secret, aad = self._at_rest()
            write_private(folder / KEY_FILE, aead_encrypt(secret, he.secret_context_bytes(self.context), aad))
        write_json(folder / STATE_FILE, {
            "format": 1, "task": self.channel.task, "roster": self.roster, "holder": self.holder,
            "length": self._length, "sent": {str(r): list(v) for r, v in self._sent.items()},
            "decrypted": sorted(self._decrypted)})

    def _restore(self) -> None:
        """Once, before the first message: what an earlier run of this participant kept (a restart)."""
        if self._restored:
            return
        self._restored = True
        folder = self._folder()
        kept = read_json(folder / STATE_FILE) if folder is not None else None
        if not kept or kept.get("task") != self.channel.task:
            return
        self.roster, self.holder = list(kept["roster"]), kept["holder"]
        self._length = kept.get("length")
        self._sent = {int(r): (str(v[0]), int(v[1])) for r, v in (kept.get("sent") or {}).items()}
        self._decrypted = {int(r) for r in kept.get("decrypted") or []}
        if (folder / KEY_FILE).exists():
            secret, aad = self._at_rest()
            self.context = he.load_context(aead_decrypt(secret, (folder / KEY_FILE).read_bytes(), aad), secret=True)
        self.part.progress.message(
            f"task {self.channel.task}: kept the task's CKKS key from before the restart, with the record of the "
            f"rounds it encrypted an update for ({sorted(self._sent)}) and decrypted ({sorted(self._decrypted)})")

    def handle(self, message) -> None:
        self._restore()
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
            self._save(key=True)
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
        self._save(key=True)  # kept before anyone else gets it
        secret = he.secret_context_bytes(self.context)
        others = sorted(p for p in anns if p != me)
        blobs = [he.public_context_bytes(self.context)]
        blobs += [he.wrap_secret(secret, self._x_sk, anns[p]["x_pk"], task, me, p) for p in others]
        self.channel.send("pom3_context", pack_blobs(blobs), round=-1, recipients=others)

    def encode(self, message, update, header) -> tuple[bytes, dict]:
        self._restore()
        if self.context is None:
            raise PomError("this participant holds no CKKS key for the task")
        number = message.get("round")
        if not isinstance(number, int) or isinstance(number, bool) or number < 0:
            raise PomError(f"the round number {number!r} is not a non-negative integer")
        if self._decrypted and number <= max(self._decrypted):
            raise PomError(f"round {number}: this participant already decrypted the sum of round "
                           f"{max(self._decrypted)}; it sends no update for that round or an earlier one")
        if number in self._sent:  # (only after a restart: else the engine sends the same bytes again)
            raise PomError(f"round {number}: this participant encrypted an update for that round before it was "
                           "restarted; it encrypts no other update for the round")
        started = time.perf_counter()
        change, n = self._change(message, update, header)
        self._length = int(change.size)
        body = pack_blobs(he.encrypt(self.context, change * float(n), n_summands=len(self.roster)))
        self._sent[number] = (hashlib.sha256(body).hexdigest(), n)
        for old in sorted(self._sent)[:-8]:  # a decryption is asked for the round under way: a few suffice
            self._sent.pop(old)
        self._save()  # before the bytes leave (the engine keeps, publishes and sends them after this)
        self.stats = {"protect_s": time.perf_counter() - started, "bytes": len(body)}
        return body, header

    def _committed(self, number: int) -> dict | None:
        """The payload of the first ``sum_committed`` entry for round ``number`` (only the task creator
        may write one; the platform enforces it), read from the ledger."""
        if number not in self._commits:
            for item in self.channel.entries(self._ledger_read):
                entry = item["entry"]
                self._ledger_read = max(self._ledger_read, int(entry["seq"]) + 1)
                payload = entry.get("payload") or {}
                if entry.get("type") == COMMIT and isinstance(payload.get("round"), int):
                    self._commits.setdefault(payload["round"], payload)
        return self._commits.get(number)

    def _on_decrypt(self, message) -> None:
        number, me = message.get("round"), self.channel.name
        if self.context is None or self._length is None:
            raise PomError("nothing to decrypt: this participant sent no encrypted update")
        if not isinstance(number, int) or isinstance(number, bool) or number not in self._sent:
            raise PomError(f"round {number!r}: this participant sent no encrypted update in that round, "
                           "so it decrypts nothing for it")
        if number in self._decrypted:
            raise PomError(f"round {number}: this participant already decrypted that round's sum once; "
                           "refusing a second request")
        if me not in (message.get("decryptors") or []):
            self.channel.send("pom3_plain", round=number)  # another contributor decrypts this round
            return
        contributors, total, blobs = self._check_request(message, number, me)
        self._decrypted.add(number)  # one try per round, whatever happens next, and a restart too
        self._save()
        started = time.perf_counter()
        summed = he.decrypt_sum(self.context, [unpack_blobs(blob) for blob in blobs], self._length,
                                decryptions_bound(self.part.definition, self.roster))
        self.stats["decrypt_s"] = time.perf_counter() - started
        self.channel.send("pom3_plain", vector_bytes(summed / float(total), np.float64), round=number)

    def _check_request(self, message, number: int, me: str) -> tuple[list[str], int, list[bytes]]:
        """The round's sum as the ledger fixes it: the committed contributors (at least 2, this one
        among them), each forwarded update the one its author put on the ledger, the ledger's total."""
        if not getattr(self.channel, "ledger_enabled", False):
            raise PomError("POM 3 decrypts only a sum it can check against the ledger, and this session has none")
        contributors = message.get("contributors")
        if (not isinstance(contributors, list) or len(set(contributors)) != len(contributors)
                or len(contributors) < 2 or me not in contributors
                or not all(isinstance(c, str) and c in self.roster for c in contributors)):
            raise PomError(f"round {number}: refusing to decrypt a sum whose contributors {contributors!r} are not "
                           "at least 2 distinct participants of the task including this one")
        commit = self._committed(number)
        if commit is None:
            raise PomError(f"round {number}: the aggregator committed to no sum on the ledger ({COMMIT})")
        if commit.get("contributors") != sorted(contributors) or commit.get("n_samples") != message.get("total"):
            raise PomError(f"round {number}: the request names contributors {sorted(contributors)} and total "
                           f"{message.get('total')!r}, but the sum committed on the ledger first is of "
                           f"{commit.get('contributors')} with total {commit.get('n_samples')!r}")
        blobs, total = unpack_blobs(message.payload), 0
        if len(blobs) != len(contributors):
            raise PomError(f"round {number}: {len(blobs)} updates forwarded for {len(contributors)} contributors")
        for name, blob in zip(sorted(contributors), blobs):
            digest = hashlib.sha256(blob).hexdigest()
            if name == me:
                expected, n = self._sent[number]
            else:
                meta = self.channel.published_update(name, number) or {}
                expected, n = meta.get("sha256"), meta.get("n_samples")
            if digest != expected:
                raise PomError(f"round {number}: the ciphertexts forwarded as {name}'s update are not the ones "
                               f"{name} recorded on the ledger for that round (sha256 {digest[:16]}..., "
                               f"ledger {str(expected)[:16]}...)")
            if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
                raise PomError(f"round {number}: the ledger holds no valid sample count for {name}")
            total += n
        if message.get("total") != total:
            raise PomError(f"round {number}: the total sample count {message.get('total')!r} is not the "
                           f"ledger's {total}")
        return sorted(contributors), total, blobs
