"""Aggregation strategies against hand-computed results (NumPy only, no TensorFlow)."""
import gc
import subprocess
import sys
import weakref

import numpy as np
import pytest

from werkbund.algorithms.strategies import (STRATEGIES, Clip, FedAdam, FedAvg, FedAvgM, FedProx,
                                            Krum, Median, MultiKrum, TrimmedMean, build_strategy)
from werkbund.algorithms.strategies.fedprox import proximal_penalty


def arr(*values):
    return np.array(values, dtype=np.float64)


def run_round(strategy, global_weights, updates):
    """updates: list of (weights, n_samples)."""
    strategy.begin_round(global_weights)
    for i, (w, n) in enumerate(updates):
        strategy.add(w, n, f"p{i}")
    return strategy.result()


def close(actual, expected, tol=1e-12):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=tol, atol=tol)


# ------------------------------------------------------------------ hand-computed results

G2 = [arr(0, 0), arr(0)]


def test_fedavg_weights_by_samples():
    out = run_round(FedAvg(), G2, [([arr(1, 2), arr(3)], 1), ([arr(3, 6), arr(0)], 3)])
    close(out, [arr(2.5, 5.0), arr(0.75)])  # (1 + 9)/4, (2 + 18)/4, (3 + 0)/4


FIVE = [[arr(1, 10), arr(-1)], [arr(5, 20), arr(-2)], [arr(2, 30), arr(-3)],
        [arr(100, 40), arr(-4)], [arr(3, -1e6), arr(500)]]


def test_median_odd_and_even():
    out = run_round(Median(), G2, [(w, 1) for w in FIVE])
    close(out, [arr(3, 20), arr(-2)])
    out = run_round(Median(), G2, [(w, 1) for w in FIVE[:4]])
    close(out, [arr(3.5, 25), arr(-2.5)])  # means of the two middle values


def test_median_ignores_sample_counts():
    out = run_round(Median(), G2, [(w, n) for w, n in zip(FIVE, [1, 1, 1, 1, 1000])])
    close(out, [arr(3, 20), arr(-2)])


def test_trimmed_mean():
    # beta=0.2, n=5: one value dropped at each end of every coordinate
    out = run_round(TrimmedMean(beta=0.2), G2, [(w, 1) for w in FIVE])
    close(out, [arr(10 / 3, 20), arr(-2)])  # (2+3+5)/3, (10+20+30)/3, (-1-2-3)/3
    # beta=0.1, n=5: floor(0.5) = 0 dropped, the plain mean
    out = run_round(TrimmedMean(beta=0.1), G2, [(w, 1) for w in FIVE])
    close(out, [arr(22.2, -199980.0), arr(98.0)])
    # beta=0.25, n=4: one dropped at each end
    out = run_round(TrimmedMean(beta=0.25), G2, [(w, 1) for w in FIVE[:4]])
    close(out, [arr(3.5, 25), arr(-2.5)])


# Krum points (x in layer 0, y in layer 1): A(0,0) B(1,1) C(3,0) D(0,4) E(50,50); squared distances
# AB 2, AC 9, AD 16, BC 5, BD 10, CD 25, E far. With f=1 each score sums the n-f-2 = 2 nearest:
# A 2+9=11, B 2+5=7, C 5+9=14, D 10+16=26, E 4616+4709=9325.
KRUM_POINTS = [(0, 0), (1, 1), (3, 0), (0, 4), (50, 50)]
KRUM_GLOBAL = [arr(10), arr(-10)]  # distances are translation invariant


def krum_updates():
    return [([arr(x), arr(y)], 1) for x, y in KRUM_POINTS]


def test_krum_scores_and_choice():
    krum = Krum(f=1)
    out = run_round(krum, KRUM_GLOBAL, krum_updates())
    np.testing.assert_allclose(krum.last_scores, [11, 7, 14, 26, 9325])
    close(out, [arr(1), arr(1)])
    assert krum.selected == [1] and krum.selected_senders == ["p1"]


@pytest.mark.parametrize("m, expected", [
    (2, [arr(0.5), arr(0.5)]),          # B, A
    (3, [arr(4 / 3), arr(1 / 3)]),      # B, A, C
    (None, [arr(1.0), arr(1.25)]),      # n - f = 4: A, B, C, D
])
def test_multi_krum(m, expected):
    close(run_round(MultiKrum(f=1, m=m), KRUM_GLOBAL, krum_updates()), expected)


@pytest.mark.parametrize("n", [1, 2, 3, 10, 17, 33, 64, 65, 70])
def test_coordinate_statistics_match_numpy_for_any_count(n):
    # sorting network up to NETWORK_MAX = 64 updates, np.partition beyond; ties included
    rng = np.random.default_rng(n)
    g = [np.zeros((3, 5), dtype=np.float32), np.zeros(7, dtype=np.float32)]
    ups = [[rng.integers(-4, 5, size=x.shape).astype(np.float32) for x in g] for _ in range(n)]
    med = run_round(Median(), g, [(u, 1) for u in ups])
    trim = run_round(TrimmedMean(beta=0.3), g, [(u, 1) for u in ups])
    k = int(0.3 * n)
    for i in range(2):
        stack = np.sort(np.stack([u[i] for u in ups]), axis=0).astype(np.float64)
        np.testing.assert_array_equal(med[i], np.median(stack, axis=0).astype(np.float32))
        np.testing.assert_allclose(trim[i], stack[k:n - k].mean(axis=0), rtol=1e-6)
        assert med[i].dtype == np.float32


def test_batcher_network_sorts_every_zero_one_input():
    # 0-1 principle: a comparator network sorts everything iff it sorts all 0/1 sequences
    import itertools
    from werkbund.algorithms.strategies.colsort import sort_rows
    for n in range(1, 13):
        x = np.array(list(itertools.product([0, 1], repeat=n)), dtype=np.int8).T.copy()
        out = np.array(sort_rows(list(x), np.empty_like(x[0])))
        assert (np.diff(out, axis=0) >= 0).all(), n


def test_krum_with_identical_colluders():
    # three identical updates at (5, 5) have distance 0 to each other and win
    pts = [(0, 0), (1, 1), (5, 5), (5, 5), (5, 5)]
    out = run_round(Krum(f=1), KRUM_GLOBAL, [([arr(x), arr(y)], 1) for x, y in pts])
    close(out, [arr(5), arr(5)])


def test_robust_strategies_refuse_non_finite_updates():
    s = Median()
    s.begin_round(G2)
    with pytest.raises(ValueError, match="NaN or infinite"):
        s.add([arr(1, np.nan), arr(0)], 1, "mallory")


def test_krum_needs_more_than_2f_plus_2():
    krum = Krum(f=1)
    krum.begin_round(KRUM_GLOBAL)
    for w, n in krum_updates()[:4]:
        krum.add(w, n)
    with pytest.raises(ValueError, match=r"n > 2f \+ 2.*n=4 with f=1"):
        krum.result()
    with pytest.raises(ValueError, match="cannot select m=6"):
        run_round(MultiKrum(f=1, m=6), KRUM_GLOBAL, krum_updates())


def test_clip_bounds_each_delta_then_averages():
    g = [arr(1, 1), arr(1)]
    clip = Clip(max_norm=1.0)
    # delta (3, 0, 4) has norm 5 -> (0.6, 0, 0.8); delta (0.3, 0, 0.4) has norm 0.5 -> unchanged
    out = run_round(clip, g, [([arr(4, 1), arr(5)], 1), ([arr(1.3, 1), arr(1.4)], 1)])
    close(out, [arr(1.45, 1), arr(1.6)])
    assert clip.norms == pytest.approx([5.0, 0.5]) and clip.clipped == 1


def test_clip_around_median():
    g = [arr(0.0), arr(0.0)]
    clip = build_strategy({"name": "clip", "max_norm": 2, "inner": "median"})
    ups = [([arr(3), arr(4)], 1), ([arr(0.6), arr(0.8)], 1), ([arr(-30), arr(0)], 1)]
    # clipped to (1.2, 1.6), (0.6, 0.8), (-2, 0) -> median (0.6, 0.8)
    close(run_round(clip, g, ups), [arr(0.6), arr(0.8)])


def test_fedprox_penalty_and_server_side():
    assert proximal_penalty([arr(1, 2), arr(3)], [arr(0, 0), arr(1)], mu=0.5) == pytest.approx(2.25)
    assert proximal_penalty([arr(1, 2)], [arr(1, 2)], mu=3) == 0
    with pytest.raises(ValueError, match="trainable variables"):
        proximal_penalty([arr(1)], [arr(1), arr(2)], mu=1)
    prox = build_strategy({"name": "fedprox", "mu": 0.1})
    assert prox.participant_options() == {"mu": 0.1}
    out = run_round(prox, G2, [([arr(1, 2), arr(3)], 1), ([arr(3, 6), arr(0)], 3)])
    close(out, [arr(2.5, 5.0), arr(0.75)])


def test_fedprox_module_does_not_import_keras():
    code = ("import sys, werkbund.algorithms.strategies.fedprox; "
            "assert 'keras' not in sys.modules and 'tensorflow' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------ server optimizers, two rounds

G3 = [arr(1.0, -2.0), arr(0.5)]
# round 1: two updates with deltas (2,-2,4) and (6,2,4), equal counts -> FedAvg delta (4, 0, 4)
# round 2: one update with delta (0, 4, 2)


def two_rounds(strategy):
    r1 = [([G3[0] + arr(2, -2), G3[1] + arr(4)], 5), ([G3[0] + arr(6, 2), G3[1] + arr(4)], 5)]
    w1 = run_round(strategy, G3, r1)
    w2 = run_round(strategy, w1, [([w1[0] + arr(0, 4), w1[1] + arr(2)], 7)])
    return w1, w2


# eta=0.6, beta1=0.5, beta2=0.5, tau=1 (v starts at tau**2 = 1); worked out by hand per coordinate,
# e.g. FedYogi coordinate 0: m = 2, v = 1 + 0.5*16 = 9, w = 1 + 0.6*2/(3+1) = 1.3; then
# m = 1, v = 9 - 0.5*0*sign(9) = 9, w = 1.3 + 0.6*1/4 = 1.45.
OPT = dict(eta=0.6, beta1=0.5, beta2=0.5, tau=1.0)
TWO_ROUNDS = {
    "fedadam": ([arr(1.306476151587624, -2.0), arr(0.806476151587624)],
                [arr(1.5024551324138695, -1.690105160286508), arr(1.1493332944447667)],
                {"m": [2, 0, 2, 1, 2, 2], "v": [8.5, 0.5, 8.5, 4.25, 8.25, 6.25]}),
    "fedyogi": ([arr(1.3, -2.0), arr(0.8)],
                [arr(1.45, -1.7), arr(1.1291502622129181)],   # 0.8 + 1.2/(sqrt(7)+1)
                {"m": [2, 0, 2, 1, 2, 2], "v": [9, 1, 9, 9, 9, 7]}),
    "fedadagrad": ([arr(1.2342329219213246, -2.0), arr(0.7342329219213245)],
                   [arr(1.351349382881987, -1.7657670780786754), arr(0.9491874636186749)],
                   {"m": [2, 0, 2, 1, 2, 2], "v": [17, 1, 17, 17, 17, 21]}),
}


@pytest.mark.parametrize("name", sorted(TWO_ROUNDS))
def test_adaptive_server_optimizers_two_rounds(name):
    options = dict(OPT)
    if name == "fedadagrad":
        del options["beta2"]
    strategy = build_strategy({"name": name, **options})
    w1_expected, w2_expected, moments = TWO_ROUNDS[name]
    strategy.begin_round(G3)
    w1, w2 = two_rounds(strategy)
    close(w1, w1_expected)
    close(w2, w2_expected)
    state = strategy.state_dict()
    assert state["round"].tolist() == [2]
    for k, values in moments.items():
        close([state[f"{k}.0"], state[f"{k}.1"]], [arr(*values[3:5]), arr(values[5])])


def test_fedavgm_two_rounds():
    # eta=0.5, momentum=0.5: m = (4,0,4), w1 = G3 + 0.5 m = (3,-2,2.5);
    # m = 0.5*(4,0,4) + (0,4,2) = (2,4,4), w2 = w1 + 0.5 m = (4,0,4.5)
    w1, w2 = two_rounds(FedAvgM(eta=0.5, momentum=0.5))
    close(w1, [arr(3, -2), arr(2.5)])
    close(w2, [arr(4, 0), arr(4.5)])


def test_fedavgm_without_momentum_is_its_inner_strategy():
    opt = build_strategy({"name": "fedavgm", "eta": 1, "momentum": 0, "inner": "median"})
    close(run_round(opt, G2, [(w, 1) for w in FIVE]), [arr(3, 20), arr(-2)])


def test_server_optimizer_steps_once_per_round():
    opt = FedAdam(**OPT)
    opt.begin_round(G3)
    w1, _ = two_rounds(opt)
    again = opt.result()
    assert opt.state_dict()["round"].tolist() == [2]
    assert all(a is b for a, b in zip(again, opt.result()))


def test_nested_spec_from_the_task_definition():
    s = build_strategy({"name": "fedadam", "eta": 0.01, "inner": {"name": "trimmed_mean", "beta": 0.2}})
    assert isinstance(s, FedAdam) and isinstance(s.inner, TrimmedMean)
    assert s.eta == 0.01 and s.inner.beta == 0.2
    s = build_strategy({"name": "fedyogi",
                        "inner": {"name": "clip", "max_norm": 5, "inner": {"name": "krum", "f": 2}}})
    assert isinstance(s.inner, Clip) and isinstance(s.inner.inner, Krum) and s.inner.inner.f == 2
    assert isinstance(build_strategy("fedadam").inner, FedAvg)
    assert set(STRATEGIES) == {"fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad",
                               "clip", "median", "trimmed_mean", "krum", "multi_krum"}


# ------------------------------------------------------------------ state_dict round trip

def test_state_dict_round_trip_resumes_identically():
    spec = {"name": "clip", "max_norm": 100, "inner": {"name": "fedyogi", **OPT}}
    a = build_strategy(spec)
    a.begin_round(G3)
    w1 = run_round(a, G3, [([G3[0] + arr(4, 0), G3[1] + arr(4)], 1)])
    state = a.state_dict()
    assert set(state) == {"inner.round", "inner.m.0", "inner.m.1", "inner.v.0", "inner.v.1"}
    assert all(isinstance(v, np.ndarray) for v in state.values())
    b = build_strategy(spec)
    b.load_state_dict({k: v.copy() for k, v in state.items()})
    r2 = [([w1[0] + arr(0, 4), w1[1] + arr(2)], 1)]
    w2 = run_round(b, w1, r2)
    close(w2, run_round(a, w1, r2), tol=0)
    close(w2, [arr(1.45, -1.7), arr(1.1291502622129181)])  # as FedYogi in TWO_ROUNDS
    assert b.state_dict()["inner.round"].tolist() == [2]


def test_state_dict_through_safetensors(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    a = FedAdam(**OPT)
    two_rounds(a)
    st.save_file(a.state_dict(), tmp_path / "opt.safetensors")
    b = FedAdam(**OPT)
    b.load_state_dict(st.load_file(tmp_path / "opt.safetensors"))
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[k], v)


def test_fresh_state_and_stateless_strategies():
    assert FedAdam().state_dict() == {"round": np.array([0])}
    b = FedAdam()
    b.load_state_dict(FedAdam().state_dict())
    assert Median().state_dict() == {} and Clip().state_dict() == {}
    with pytest.raises(ValueError, match="keeps no state"):
        Median().load_state_dict({"m.0": arr(1)})


def test_bad_state_is_refused():
    a = FedAdam(**OPT)
    two_rounds(a)
    state = a.state_dict()
    with pytest.raises(ValueError, match="missing"):
        FedAdam().load_state_dict({k: v for k, v in state.items() if k != "v.1"})
    with pytest.raises(ValueError, match="unknown"):
        FedAdam().load_state_dict(state | {"w.0": arr(1)})
    with pytest.raises(ValueError, match="missing"):
        FedAvgM().load_state_dict(state)  # FedAvgM keeps no v
    b = FedAdam(**OPT)
    b.load_state_dict(state)
    with pytest.raises(ValueError, match="layer shapes"):
        run_round(b, [arr(1, 2, 3)], [([arr(1, 2, 3)], 1)])


# ------------------------------------------------------------------ robustness

ROBUST = [{"name": "median"}, {"name": "trimmed_mean", "beta": 0.2}, {"name": "krum", "f": 1},
          {"name": "multi_krum", "f": 1}, {"name": "fedavgm", "eta": 1, "momentum": 0, "inner": "median"}]
ATTACKS = {
    "weights scaled by 1e6": lambda w, g: [1e6 * x for x in w],
    "weights sign-flipped": lambda w, g: [-x for x in w],
    "delta scaled by 1e6": lambda w, g: [y + 1e6 * (x - y) for x, y in zip(w, g)],
    "delta sign-flipped": lambda w, g: [y - (x - y) for x, y in zip(w, g)],
}


def attacked_round(spec, attack):
    rng = np.random.default_rng(7)
    g = [rng.normal(size=(6, 4)), rng.normal(size=4)]
    delta = [rng.normal(size=(6, 4)), rng.normal(size=4)]
    honest = [[x + d + 0.01 * rng.normal(size=x.shape) for x, d in zip(g, delta)] for _ in range(4)]
    honest_mean = [np.mean([h[i] for h in honest], axis=0) for i in range(2)]
    ups = honest[:2] + [ATTACKS[attack](honest[2], g)] + honest[2:]
    out = run_round(build_strategy(spec), g, [(w, 10) for w in ups])
    err = np.sqrt(sum(np.sum((o - h) ** 2) for o, h in zip(out, honest_mean)))
    size = np.sqrt(sum(np.sum(d ** 2) for d in delta))
    return err / size


@pytest.mark.parametrize("attack", sorted(ATTACKS))
@pytest.mark.parametrize("spec", ROBUST, ids=lambda s: s["name"] + ("+median" if "inner" in s else ""))
def test_robust_strategies_resist_one_bad_update_of_five(spec, attack):
    assert attacked_round(spec, attack) < 0.02


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_fedavg_is_not_robust(attack):
    assert attacked_round({"name": "fedavg"}, attack) > 0.3


# ------------------------------------------------------------------ streaming

@pytest.mark.parametrize("spec", ["fedavg", "fedadam", "fedavgm", "fedprox",
                                  {"name": "fedyogi", "inner": {"name": "clip", "max_norm": 0.1}}])
def test_streaming_strategies_hold_no_update(spec):
    s = build_strategy(spec)
    s.begin_round([np.zeros(1000)])
    refs = []
    for i in range(3):
        w = np.full(1000, float(i))
        refs.append(weakref.ref(w))
        s.add([w], 1)
        del w
    gc.collect()
    assert all(r() is None for r in refs) and s.count == 3
    assert s.result()[0].shape == (1000,)


def test_buffered_strategies_hold_every_update():
    s = Median()
    s.begin_round([np.zeros((2, 3), dtype=np.float32)])
    for i in range(3):
        s.add([np.full((2, 3), i, dtype=np.float32)], 1)
    assert s.count == 3 and len(s.updates) == 3 and s.updates[0].dtype == np.float32
    assert s.result()[0].dtype == np.float32


def test_buffered_result_drops_the_updates_and_repeats():
    s = Median()
    first = run_round(s, G2, [(w, 1) for w in FIVE])
    assert s.updates == [] and s.count == 5 and s.result() is first
    with pytest.raises(ValueError, match="already taken"):
        s.add(FIVE[0], 1)


def test_new_round_forgets_the_last():
    s = TrimmedMean(beta=0.2)
    run_round(s, G2, [(w, 1) for w in FIVE])
    s.begin_round(G2)
    assert s.count == 0
    with pytest.raises(ValueError, match="no update"):
        s.result()


# ------------------------------------------------------------------ bad specs

@pytest.mark.parametrize("spec, message", [
    ("fedsgd", "unknown strategy 'fedsgd'; known: clip, fedadagrad"),
    ({"name": 3}, "unknown strategy 3"),
    (42, "must be a name or a mapping"),
    ({"name": "fedadam", "etta": 0.1}, "no option 'etta'; its options: inner, eta, beta1, beta2, tau"),
    ({"name": "median", "inner": "fedavg"}, "'median' has no option 'inner'; its options: none"),
    ({"name": "fedadagrad", "beta2": 0.9}, "no option 'beta2'"),
    ({"name": "fedadam", "eta": -1}, "fedadam: option 'eta' must be > 0"),
    ({"name": "fedadam", "beta1": 1.0}, "option 'beta1' must be < 1"),
    ({"name": "fedyogi", "tau": 0}, "option 'tau' must be > 0"),
    ({"name": "fedavgm", "momentum": "high"}, "option 'momentum' must be a finite number"),
    ({"name": "trimmed_mean", "beta": 0.5}, "option 'beta' must be < 0.5"),
    ({"name": "trimmed_mean", "beta": float("nan")}, "finite number"),
    ({"name": "krum", "f": -1}, "krum: option 'f' must be >= 0"),
    ({"name": "krum", "f": 1.5}, "option 'f' must be an integer"),
    ({"name": "multi_krum", "m": 0}, "option 'm' must be >= 1"),
    ({"name": "multi_krum", "f": True}, "option 'f' must be an integer"),
    ({"name": "clip", "max_norm": 0}, "option 'max_norm' must be > 0"),
    ({"name": "fedprox", "mu": -0.1}, "option 'mu' must be >= 0"),
    ({"name": "fedadam", "inner": {"name": "krum", "f": 1, "m": 2}}, "'krum' has no option 'm'"),
    ({"name": "fedadam", "inner": {"name": "nope"}}, "unknown strategy 'nope'"),
    ({"name": "fedadam", "inner": 7}, "must be a name or a mapping"),
])
def test_bad_specs_raise_clear_value_errors(spec, message):
    with pytest.raises(ValueError) as info:
        build_strategy(spec)
    assert message in str(info.value)


@pytest.mark.parametrize("cls", [FedAvg, Median, Krum, FedAdam, Clip, FedProx])
def test_bad_sample_counts(cls):
    s = cls()
    s.begin_round(G2)
    with pytest.raises(ValueError, match="positive"):
        s.add([arr(1, 2), arr(3)], 0)
