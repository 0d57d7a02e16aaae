"""Crashes and restarts under the privacy modes: POM 2 (secure aggregation) and POM 3 (CKKS).

The same real processes as ``test_crash_recovery.py`` (its ``Federation``: a local platform, the
aggregator, here three participants bob, carol and mallory; carol frozen with SIGSTOP in a round R
in which the others published their updates and she did not, then one part killed with SIGKILL).
Each scenario ends COMPLETE; what the privacy modes add:

- POM 2 keeps a round's SecAgg secrets (its two X25519 keys, its self-mask seed, the shares it
  holds of the others) in memory only, never on disk. A participant killed in round R has lost
  them: in R it sends nothing masked, it is refused for R with the reason, and the others' sum is
  unmasked without it (its pairwise masks removed with the shares the others hold); it takes part
  again from R + 1 with fresh keys.
- POM 3 keeps the task's CKKS key, the rounds it encrypted an update for and the rounds it
  decrypted in the participant's state folder (0600, the key encrypted under a key derived from
  its identity key), so a restarted participant goes on in R with the same key and decrypts as
  before, never twice for one round.
- A resumed aggregator keeps the POM 3 key (its checkpoint holds the context without keys); under
  POM 2 it runs round R again with fresh keys, and every participant masks the same update it
  made for R under them (never a second, different one).

The models are compared with a run of the same task without a crash where the participants keep
running (platform killed, aggregator resumed): the same updates reach the same sums, so the final
models agree within the encodings' rounding (POM 2: fixed point; POM 3: CKKS and its flooding noise).
A restarted participant starts a fresh local optimizer, so its later updates differ; there the test
checks the rounds instead.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from support.process_federation import Federation, wait_for

from werkbund.algorithms.model_files import read_named_arrays

PARTICIPANTS = ("bob", "carol", "mallory")
ROUNDS = 4
TOLERANCE = 1e-7  # on the final weights: fixed-point rounding (POM 2), CKKS and its flooding noise (POM 3)


def definition(pom: int) -> dict:
    return {"pom": pom, "rounds": ROUNDS, "quorum": len(PARTICIPANTS), "round_timeout": 300}


def final_weights(fed: Federation) -> list[np.ndarray]:
    model, _ = fed.api().get_model("t")
    arrays = read_named_arrays(model)
    return [arrays[k] for k in sorted(arrays)]


def whole_rounds(info: dict, except_round: int | None = None) -> None:
    for record in info["rounds"]:
        if record["round"] == except_round:
            continue
        assert sorted(record["reported"]) == list(PARTICIPANTS), record
        assert not record["rejected"] and not record["missing"], record
        assert record["metrics"]["pom"]["mode"] in (2, 3)


_baselines: dict[int, list[np.ndarray]] = {}


@pytest.fixture
def baseline(tmp_path_factory):
    """The final model of the same task without any crash (run once per POM)."""
    def run(pom: int) -> list[np.ndarray]:
        if pom not in _baselines:
            fed = Federation(tmp_path_factory.mktemp(f"baseline-pom{pom}"), PARTICIPANTS, definition(pom))
            try:
                fed.setup_task()
                whole_rounds(fed.finish())
                _baselines[pom] = final_weights(fed)
            finally:
                fed.close()
        return _baselines[pom]
    return run


@pytest.fixture
def make(tmp_path):
    made = []

    def build(pom: int) -> Federation:
        made.append(Federation(tmp_path, PARTICIPANTS, definition(pom)))
        return made[-1]
    yield build
    for fed in made:
        fed.close()


def same_model(got: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert [w.shape for w in got] == [w.shape for w in expected]
    gap = max(float(np.max(np.abs(a - b))) for a, b in zip(got, expected))
    assert gap < TOLERANCE, f"the final model differs from the run without a crash by {gap:.3g}"


@pytest.mark.slow
@pytest.mark.parametrize("pom", [2, 3])
def test_a_participant_killed_mid_round_under_pom_2_or_3_and_restarted(make, pom):
    fed = make(pom)
    fed.setup_task()
    number = fed.hold_a_round_open(published_ok=True)
    fed.kill(fed.procs["carol"])  # before her update of round `number` was published
    fed.participate("carol")
    info = fed.finish(every_round_whole=False)
    carol, aggregate = fed.log("carol"), fed.log("aggregate")
    assert "this participant ran before" in carol and "carol was restarted" in aggregate
    if pom == 2 and "carol" not in info["rounds"][number]["reported"]:
        # Her SecAgg secrets of round `number` died with her: she masks nothing for it, is refused with
        # the reason, and the round's sum is unmasked over the others (t = 2 of 3); from the next round on
        # she takes part again with fresh keys.
        whole_rounds(info, except_round=number)
        record = info["rounds"][number]
        assert sorted(record["reported"]) == ["bob", "mallory"], record
        assert "lost its secure-aggregation keys of round" in record["rejected"]["carol"], record
        assert record["metrics"]["pom"]["survivors"] == ["bob", "mallory"]
        assert record["metrics"]["pom"]["dropped"] == ["carol"]
    elif pom == 2:
        # (Frozen in the instant between keeping her masked update on disk and publishing it: the same
        # bytes, masked under the round's keys that the others still hold shares of, were sent as they were.)
        whole_rounds(info)
        assert "kept the update of round" in carol
    elif "carol" not in info["rounds"][number]["reported"]:
        # (Frozen in the instant between encrypting her update of round `number`, which she records, and
        # keeping its bytes: none of them left her machine, but she encrypts no second update for a round,
        # so the round is summed over the others, with her reason, and she takes part again from the next.)
        whole_rounds(info, except_round=number)
        record = info["rounds"][number]
        assert sorted(record["reported"]) == ["bob", "mallory"], record
        assert "encrypted an update for that round before it was restarted" in record["rejected"]["carol"], record
        assert "kept the task's CKKS key" in carol
    else:
        # The task's CKKS key and her record of what she encrypted and decrypted survive in her state
        # folder: she trains round `number` once, encrypts it with the same key, and (as the second
        # lowest name) decrypts that round's sum with bob.
        whole_rounds(info)
        assert info["rounds"][number]["metrics"]["pom"]["decrypted_by"] == ["bob", "carol"]
        assert "kept the task's CKKS key" in carol
    kept = {p.name: p for p in (fed.tmp / "carol" / "participant").rglob("*") if p.is_file()}
    private = {"last-update.json", "last-update.bin",
               *(("secagg-signed.json",) if pom == 2 else ("pom3-state.json", "pom3-key.bin"))}
    assert set(kept) - {"participant-ran"} <= private  # under POM 2 no round's secrets are ever on disk
    # (a small update's bytes are kept inside last-update.json, a larger one's in last-update.bin beside it)
    assert "last-update.json" in kept and (pom == 2 or "pom3-key.bin" in kept)
    assert {oct(kept[name].stat().st_mode & 0o777) for name in set(kept) & private} == {"0o600"}
    if pom == 3:  # the key file alone is no CKKS context: it is encrypted under a key from her identity key
        read = subprocess.run([sys.executable, "-c", "import sys; from werkbund.algorithms.privacy.ckks import encryption as he_ckks; "
                               "he_ckks.load_context(open(sys.argv[1], 'rb').read(), secret=True)",
                               str(kept["pom3-key.bin"])], capture_output=True, text=True)
        assert read.returncode != 0 and "the CKKS context is not readable" in read.stderr, read.stderr


@pytest.mark.slow
@pytest.mark.parametrize("pom", [2, 3])
def test_an_aggregator_killed_mid_round_under_pom_2_or_3_resumes_with_the_same_updates(make, baseline, pom):
    fed = make(pom)
    fed.setup_task()
    number = fed.hold_a_round_open(published_ok=True)
    fed.kill(fed.procs["aggregate"])
    fed.aggregate("--resume")
    info = fed.finish()  # every round, round `number` too, with all three updates once
    assert "resumed from the checkpoint of round" in fed.log("aggregate")
    records = info["rounds"]
    if pom == 2:  # round `number` ran again under fresh keys, and the same updates were masked with them
        assert records[number]["metrics"]["pom"]["keys_with_previous_round"] is False
        assert records[number]["metrics"]["pom"]["survivors"] == list(PARTICIPANTS)
        assert "masked again under the round's new keys" in fed.log("bob")
    else:  # the task's key was not made again: the resumed aggregator kept its context without keys
        assert fed.log("aggregate").count("CKKS key made by bob") == 1
        assert "kept the task's CKKS context" in fed.log("aggregate")
        # decrypted by the two lowest names, or (carol frozen while the resumed aggregator asked) by
        # whoever stood in for a decryptor that did not answer: members of the task either way
        decrypted_by = records[number]["metrics"]["pom"]["decrypted_by"]
        assert decrypted_by and set(decrypted_by) <= set(PARTICIPANTS), decrypted_by
    same_model(final_weights(fed), baseline(pom))


@pytest.mark.slow
@pytest.mark.parametrize("pom", [2, 3])
def test_a_platform_killed_mid_round_under_pom_2_or_3_and_restarted_loses_nothing(make, baseline, pom):
    fed = make(pom)
    fed.setup_task()
    number = fed.hold_a_round_open(published_ok=True)
    fed.kill(fed.platform)
    assert all(proc.poll() is None for proc in fed.procs.values())
    fed.start_platform()
    wait_for(lambda: fed.round_under_way()[0] == number, 60, "the platform to answer again")
    info = fed.finish()
    assert len(info["rounds"]) == ROUNDS
    same_model(final_weights(fed), baseline(pom))
