"""Record-level DP-SGD for Keras 3 models on the TensorFlow backend.

tensorflow-privacy does not import with Keras 3, so the train step is written here
(Abadi et al., 2016): each step takes a Poisson sample of the records (each one
independently with probability ``q = batch_size / n``, the sampling the accountant
assumes), computes per-example gradients with ``tf.vectorized_map``, clips each
example's gradient to L2 norm ``l2_norm_clip`` (over all trainable variables
together), adds Gaussian noise with standard deviation ``noise_multiplier *
l2_norm_clip`` to the sum and divides by the expected batch size ``q * n``. The
model's own optimizer applies the result (post-processing, no extra privacy cost).

The sampling and the noise come from generators seeded by the operating system,
never from the task's (public) seed: noise an adversary can regenerate protects
nothing. ``seed`` exists for tests only.
"""
from __future__ import annotations

import numpy as np

from werkbund.algorithms import keras_models  # noqa: F401  (sets the Keras backend before keras loads)
from werkbund.algorithms.privacy.dp.accounting_pld import StepEvents, sampling_rate, steps_per_epoch

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402


def clip_per_example(gradients: list, l2_norm_clip: float) -> tuple[list, tf.Tensor]:
    """Clip each example's gradient (rows of every tensor in ``gradients``) to global L2 norm
    ``l2_norm_clip``; return the clipped gradients and the per-example norms before clipping."""
    squares = [tf.reshape(tf.square(g), [tf.shape(g)[0], -1]) for g in gradients]
    norms = tf.sqrt(tf.add_n([tf.reduce_sum(s, axis=1) for s in squares]))
    scale = 1.0 / tf.maximum(1.0, norms / l2_norm_clip)
    clipped = [g * tf.reshape(tf.cast(scale, g.dtype), [-1] + [1] * (len(g.shape) - 1)) for g in gradients]
    return clipped, norms


class DPSGDTrainer:
    """DP-SGD training of a compiled Keras model (its loss and optimizer) on one participant's data."""

    def __init__(self, model: keras.Model, l2_norm_clip: float, noise_multiplier: float, batch_size: int,
                 seed: int | None = None):
        if l2_norm_clip <= 0:
            raise ValueError(f"l2_norm_clip must be positive, not {l2_norm_clip!r}")
        if noise_multiplier < 0:
            raise ValueError(f"noise_multiplier cannot be negative, not {noise_multiplier!r}")
        if model.optimizer is None or model.loss is None:
            raise ValueError("DP-SGD needs a compiled model (its loss and optimizer are used)")
        self.model = model
        self.l2_norm_clip = float(l2_norm_clip)
        self.noise_multiplier = float(noise_multiplier)
        self.batch_size = int(batch_size)
        self.loss_fn = keras.losses.get(model.loss) if isinstance(model.loss, str) else model.loss
        self._sampler = np.random.default_rng(seed)  # seed None: fresh entropy from the OS
        self._noise = tf.random.Generator.from_seed(seed) if seed is not None \
            else tf.random.Generator.from_non_deterministic_state()
        self._step = tf.function(self._private_step, reduce_retracing=True)

    # ------------------------------------------------------------ steps
    def per_example_gradients(self, x, y) -> tuple[list, tf.Tensor]:
        """The gradient of every example's loss (one row per example) and the losses."""
        variables = self.model.trainable_variables

        def one(example):
            xi, yi = example
            with tf.GradientTape() as tape:
                prediction = self.model(xi[None], training=True)
                loss = tf.reduce_mean(self.loss_fn(yi[None], prediction))
            return tape.gradient(loss, variables), loss

        return tf.vectorized_map(one, (x, y))

    def _private_step(self, x, y, expected_batch):
        variables = self.model.trainable_variables
        gradients, losses = self.per_example_gradients(x, y)
        clipped, _ = clip_per_example(gradients, self.l2_norm_clip)
        std = self.noise_multiplier * self.l2_norm_clip
        noised = [(tf.reduce_sum(g, axis=0) + self._noise.normal(tf.shape(v), stddev=std, dtype=g.dtype))
                  / tf.cast(expected_batch, g.dtype) for g, v in zip(clipped, variables)]
        self.model.optimizer.apply_gradients(zip(noised, variables))
        return tf.reduce_sum(losses)

    def _noise_only_step(self, expected_batch: float) -> None:
        """An empty Poisson sample still releases noise: the step must happen (and is accounted)."""
        std = self.noise_multiplier * self.l2_norm_clip
        variables = self.model.trainable_variables
        noise = [self._noise.normal(tf.shape(v), stddev=std, dtype=v.dtype) / expected_batch for v in variables]
        self.model.optimizer.apply_gradients(zip(noise, variables))

    # ------------------------------------------------------------- train
    def train(self, x, y, epochs: int, on_epoch=None) -> tuple[StepEvents, list[float]]:
        """Train ``epochs`` epochs of ``ceil(n / batch_size)`` Poisson-sampled steps each.

        Returns the steps taken (for the accountant) and the mean per-example loss of each epoch.
        """
        x = np.asarray(x, dtype=np.float32)
        y = np.asarray(y)
        n = len(x)
        q = sampling_rate(self.batch_size, n)
        steps = steps_per_epoch(self.batch_size, n)
        expected = tf.constant(q * n, dtype=tf.float32)
        epoch_losses = []
        for epoch in range(epochs):
            total, seen = 0.0, 0
            for _ in range(steps):
                rows = np.flatnonzero(self._sampler.random(n) < q)
                if len(rows) == 0:
                    self._noise_only_step(float(q * n))
                    continue
                total += float(self._step(tf.constant(x[rows]), tf.constant(y[rows]), expected))
                seen += len(rows)
            epoch_losses.append(total / max(seen, 1))
            if on_epoch is not None:
                on_epoch(epoch, {"loss": epoch_losses[-1]})
        return StepEvents(q, self.noise_multiplier, epochs * steps), epoch_losses
