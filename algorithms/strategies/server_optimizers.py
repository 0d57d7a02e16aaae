"""Server optimizers (Reddi et al. 2021, "Adaptive Federated Optimization"), as wrappers.

The inner strategy (default FedAvg) gives the round's aggregate; the pseudo-gradient is
``delta = aggregate - global`` and the server takes one optimizer step on it:

    FedAvgM     m = momentum * m + delta                      w = w + eta * m
    FedAdam     m = b1 * m + (1 - b1) * delta,  v = b2 * v + (1 - b2) * delta**2
    FedYogi     m as Adam,  v = v - (1 - b2) * delta**2 * sign(v - delta**2)
    FedAdagrad  m as Adam,  v = v + delta**2
    (adaptive)  w = w + eta * m / (sqrt(v) + tau)

``m`` starts at 0 and ``v`` at ``tau**2`` (the paper's ``v_{-1} >= tau**2``); there is no bias
correction, as in the paper. FedAvgM with ``eta=1, momentum=0`` is the inner strategy itself.
Moments are kept in float64, one array per layer, and updated in cache-sized blocks;
``state_dict`` exports them with the number of steps taken so that a checkpoint can resume the
optimizer. The wrapper streams: it holds only its moments and whatever the inner strategy holds.
"""
from __future__ import annotations

import numpy as np

from werkbund.algorithms.strategies.base import Strategy, Weights
from werkbund.algorithms.strategies.blocks import BLOCK, spans
from werkbund.algorithms.strategies.options import number
from werkbund.algorithms.strategies.wrapper import INNER_PREFIX, Wrapper, split_inner


class ServerOptimizer(Wrapper):
    """Base of the server optimizers: turns the inner aggregate into an optimizer step."""

    name = "server_optimizer"
    moments = ("m",)

    def __init__(self, inner: Strategy | None = None):
        super().__init__(inner)
        self.round = 0
        self._state: dict[str, list[np.ndarray] | None] = {k: None for k in self.moments}
        self._result: Weights | None = None

    def begin_round(self, global_weights: Weights) -> None:
        super().begin_round(global_weights)
        self._result = None

    def result(self) -> Weights:
        if self._result is not None:  # a second call must not take a second step
            return self._result
        target = self.inner.result()
        if self._state["m"] is None:
            self._state = {k: self._initial(k) for k in self.moments}
        self._check_shapes()
        new = []
        scratch = np.empty(BLOCK, dtype=np.float64)
        for i, (t, g) in enumerate(zip(target, self.global_weights)):
            ft, fg = np.ravel(t), np.ravel(g)
            out = np.empty(fg.size, dtype=g.dtype)
            moments = {k: self._state[k][i].reshape(-1) for k in self.moments}
            for s in spans(fg.size):
                delta = scratch[:s.stop - s.start]
                np.subtract(ft[s], fg[s], out=delta, dtype=np.float64)
                step = self._step({k: v[s] for k, v in moments.items()}, delta)
                step += fg[s]
                out[s] = step
            new.append(out.reshape(g.shape))
        self.round += 1
        self._result = new
        return new

    def _initial(self, moment: str) -> list[np.ndarray]:
        return [np.zeros(g.shape, dtype=np.float64) for g in self.global_weights]

    def _step(self, moments: dict[str, np.ndarray], delta: np.ndarray) -> np.ndarray:
        """Update ``moments`` (views of one block) in place and return the step for the block
        (it may overwrite ``delta``)."""
        raise NotImplementedError

    def _check_shapes(self) -> None:
        m = self._state["m"]
        shapes = [g.shape for g in self.global_weights]
        if [a.shape for a in m] != shapes:
            raise ValueError(f"{self.name}: optimizer state has layer shapes {[a.shape for a in m]}, "
                             f"but the global weights have {shapes}")

    def state_dict(self) -> dict[str, np.ndarray]:
        state = {"round": np.array([self.round], dtype=np.int64)}
        for k in self.moments:
            for i, a in enumerate(self._state[k] or []):
                state[f"{k}.{i}"] = a.copy()
        return state | super().state_dict()

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        own = {k: v for k, v in state.items() if not k.startswith(INNER_PREFIX)}
        n_layers = sum(1 for k in own if k.startswith("m."))
        expected = {"round"} | {f"{k}.{i}" for k in self.moments for i in range(n_layers)}
        if set(own) != expected:
            raise ValueError(f"{self.name}: state keys do not match; missing {sorted(expected - set(own))}, "
                             f"unknown {sorted(set(own) - expected)}")
        loaded = {k: [np.array(own[f"{k}.{i}"], dtype=np.float64) for i in range(n_layers)] or None
                  for k in self.moments}
        shapes = {k: [a.shape for a in v] for k, v in loaded.items() if v}
        if any(s != shapes.get("m") for s in shapes.values()):
            raise ValueError(f"{self.name}: state moments {self.moments} do not have the same layer shapes")
        self.inner.load_state_dict(split_inner(state))
        self.round = int(np.asarray(own["round"]).reshape(-1)[0])
        self._state = loaded
        self._result = None


class FedAvgM(ServerOptimizer):
    """Server momentum (Hsu et al. 2019): ``m = momentum * m + delta``, ``w = w + eta * m``."""

    name = "fedavgm"

    def __init__(self, inner: Strategy | None = None, eta: float = 1.0, momentum: float = 0.9):
        super().__init__(inner)
        self.eta = number(self.name, "eta", eta, low=0, low_open=True)
        self.momentum = number(self.name, "momentum", momentum, low=0, high=1, high_open=True)

    def _step(self, moments: dict[str, np.ndarray], delta: np.ndarray) -> np.ndarray:
        m = moments["m"]
        m *= self.momentum
        m += delta
        np.multiply(m, self.eta, out=delta)
        return delta


class _Adaptive(ServerOptimizer):
    """FedAdam, FedYogi and FedAdagrad differ only in how ``v`` takes ``delta**2``."""

    moments = ("m", "v")

    def __init__(self, inner: Strategy | None = None, eta: float = 0.01, beta1: float = 0.9,
                 beta2: float = 0.99, tau: float = 1e-3):
        super().__init__(inner)
        self.eta = number(self.name, "eta", eta, low=0, low_open=True)
        self.beta1 = number(self.name, "beta1", beta1, low=0, high=1, high_open=True)
        self.beta2 = number(self.name, "beta2", beta2, low=0, high=1, high_open=True)
        self.tau = number(self.name, "tau", tau, low=0, low_open=True)

    def _initial(self, moment: str) -> list[np.ndarray]:
        if moment == "v":
            return [np.full(g.shape, self.tau ** 2, dtype=np.float64) for g in self.global_weights]
        return super()._initial(moment)

    def _step(self, moments: dict[str, np.ndarray], delta: np.ndarray) -> np.ndarray:
        m, v = moments["m"], moments["v"]
        m *= self.beta1
        m += (1 - self.beta1) * delta
        np.square(delta, out=delta)
        self._second_moment(v, delta)
        np.sqrt(v, out=delta)
        delta += self.tau
        np.divide(m, delta, out=delta)
        delta *= self.eta
        return delta

    def _second_moment(self, v: np.ndarray, d2: np.ndarray) -> None:
        raise NotImplementedError


class FedAdam(_Adaptive):
    name = "fedadam"

    def _second_moment(self, v: np.ndarray, d2: np.ndarray) -> None:
        v *= self.beta2
        v += (1 - self.beta2) * d2


class FedYogi(_Adaptive):
    name = "fedyogi"

    def _second_moment(self, v: np.ndarray, d2: np.ndarray) -> None:
        v -= (1 - self.beta2) * d2 * np.sign(v - d2)


class FedAdagrad(_Adaptive):
    name = "fedadagrad"

    def __init__(self, inner: Strategy | None = None, eta: float = 0.01, beta1: float = 0.9,
                 tau: float = 1e-3):
        super().__init__(inner, eta=eta, beta1=beta1, tau=tau)

    def _second_moment(self, v: np.ndarray, d2: np.ndarray) -> None:
        v += d2
