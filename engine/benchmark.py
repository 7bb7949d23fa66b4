"""Training throughput of the engine against Keras and a bare loop, in one process.

Four runners train the same model on the same in-memory batches:
- engine: `engine.Trainer`, as users run it (summaries, progress, checkpoint);
- fit_spe1: Keras 3 `Model.fit`, `jit_compile=True`, `steps_per_execution=1`;
- fit_spe50: the same with `steps_per_execution=50`;
- bare_loop: a hand-written XLA `GradientTape` step in a `tf.range` loop of 50
  steps per `tf.function` call: the floor of what TensorFlow can do.
Runners are interleaved and repeated (this machine is noisy); each is warmed
up first, so tracing and compilation are excluded and reported separately.
"""

import dataclasses
import statistics
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

import engine
import heads

FEATURES = 256
HIDDEN = (512, 512)
OUTPUTS = {"digit": 10, "parity": 2, "box": 4}
LOSS_WEIGHTS = {"digit": 1.0, "parity": 0.5, "box": 0.25}
INNER_STEPS = 50


@dataclasses.dataclass
class Measurement:
  steps_per_second: float
  first_step_seconds: float


def dataset(batch_size: int, batches: int = 64) -> tf.data.Dataset:
  """The same in-memory batches for every runner, repeated."""
  rng = np.random.default_rng(0)
  n = batch_size * batches
  x = rng.normal(size=(n, FEATURES)).astype(np.float32)
  labels = {"digit": rng.integers(0, 10, n), "parity": rng.integers(0, 2, n),
            "box": rng.normal(size=(n, 4)).astype(np.float32)}
  return tf.data.Dataset.from_tensor_slices((x, labels)).batch(
      batch_size, drop_remainder=True).cache().repeat().prefetch(tf.data.AUTOTUNE)


def flops_per_step(batch_size: int) -> float:
  """Matmul FLOPs of one training step: 2 forward + 4 backward per multiply-add."""
  widths = (FEATURES, *HIDDEN)
  multiply_adds = sum(a * b for a, b in zip(widths, widths[1:]))
  multiply_adds += HIDDEN[-1] * sum(OUTPUTS.values())
  return 6.0 * batch_size * multiply_adds


def matmul_gflops(size: int = 2048, repeats: int = 10) -> float:
  """The machine's float32 matmul rate under XLA, the bound for this model."""
  a = tf.random.normal([size, size])
  matmul = tf.function(lambda a: tf.matmul(a, a), jit_compile=True)
  matmul(a).numpy()
  start = time.perf_counter()
  for _ in range(repeats):
    result = matmul(a)
  result.numpy()
  return 2.0 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def _trunk():
  return keras.Sequential([keras.layers.Dense(units, activation="relu") for units in HIDDEN])


class EngineRunner:
  name = "engine"

  def __init__(self, data, steps):
    self._data = data
    self._directory = tempfile.mkdtemp()
    keras.utils.set_random_seed(0)
    self._trainer = engine.Trainer(
        trunk=_trunk(),
        heads=[heads.SoftmaxHead(name, n, weight=LOSS_WEIGHTS[name]) if name != "box"
               else heads.RegressionHead(name, n, weight=LOSS_WEIGHTS[name])
               for name, n in OUTPUTS.items()],
        optimizer=keras.optimizers.Adam(1e-3),
        config=engine.Config(model_dir=self._directory, steps_per_loop=INNER_STEPS,
                             checkpoint_every=10**9))
    self._steps = steps

  def warm_up(self) -> float:
    """Two steps: the plain loop and the diagnostic loop (a loop's last step) both compile."""
    start = time.perf_counter()
    self._trainer.train(self._data, steps=self._trainer.step + 2)
    return time.perf_counter() - start

  def run(self) -> float:
    target = self._trainer.step + self._steps
    start = time.perf_counter()
    self._trainer.train(self._data, steps=target)
    return self._steps / (time.perf_counter() - start)


class FitRunner:
  """Keras 3 `Model.fit` with the same losses and loss weights."""

  def __init__(self, data, steps, steps_per_execution):
    self.name = f"fit_spe{steps_per_execution}"
    keras.utils.set_random_seed(0)
    inputs = keras.Input([FEATURES])
    shared = _trunk()(inputs)
    outputs = {name: keras.layers.Dense(n, name=name)(shared) for name, n in OUTPUTS.items()}
    self._model = keras.Model(inputs, outputs)
    self._model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss={"digit": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              "parity": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              "box": keras.losses.MeanSquaredError()},
        loss_weights=LOSS_WEIGHTS, jit_compile=True, steps_per_execution=steps_per_execution)
    self._data = data
    self._steps = steps - steps % steps_per_execution
    self._steps_per_execution = steps_per_execution

  def warm_up(self) -> float:
    start = time.perf_counter()
    self._model.fit(self._data, steps_per_epoch=self._steps_per_execution, epochs=1, verbose=0)
    return time.perf_counter() - start

  def run(self) -> float:
    start = time.perf_counter()
    self._model.fit(self._data, steps_per_epoch=self._steps, epochs=1, verbose=0)
    return self._steps / (time.perf_counter() - start)


class BareLoopRunner:
  """A hand-written XLA step, 50 per `tf.function` call: the floor."""
  name = "bare_loop"

  def __init__(self, data, steps):
    keras.utils.set_random_seed(0)
    self._trunk = _trunk()
    self._heads = {name: keras.layers.Dense(n) for name, n in OUTPUTS.items()}
    self._optimizer = keras.optimizers.Adam(1e-3)
    self._trunk(tf.zeros([1, FEATURES]))
    shared = tf.zeros([1, HIDDEN[-1]])
    for layer in self._heads.values():
      layer(shared)
    self._variables = self._trunk.trainable_variables + [
        v for layer in self._heads.values() for v in layer.trainable_variables]
    self._optimizer.build(self._variables)
    self._iterator = iter(data)
    self._steps = steps - steps % INNER_STEPS
    self._loop = tf.function(self._loop_fn)
    self._step = tf.function(self._step_fn, jit_compile=True)

  def _step_fn(self, x, labels):
    with tf.GradientTape() as tape:
      shared = self._trunk(x, training=True)
      loss = 0.0
      for name in ("digit", "parity"):
        loss += LOSS_WEIGHTS[name] * tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels[name], self._heads[name](shared)))
      loss += LOSS_WEIGHTS["box"] * tf.reduce_mean(
          tf.square(labels["box"] - self._heads["box"](shared)))
    self._optimizer.apply(tape.gradient(loss, self._variables), self._variables)

  def _loop_fn(self, iterator, steps):
    for _ in tf.range(steps):
      x, labels = next(iterator)
      self._step(x, labels)

  def warm_up(self) -> float:
    start = time.perf_counter()
    self._loop(self._iterator, tf.constant(1))
    self._optimizer.iterations.numpy()
    return time.perf_counter() - start

  def run(self) -> float:
    start = time.perf_counter()
    for _ in range(self._steps // INNER_STEPS):
      self._loop(self._iterator, tf.constant(INNER_STEPS))
    self._optimizer.iterations.numpy()  # Waits for the last step.
    return self._steps / (time.perf_counter() - start)


def run(batch_size: int = 256, steps: int = 2000, repetitions: int = 5) -> dict:
  """{runner: Measurement}, medians over interleaved repetitions."""
  data = dataset(batch_size)
  runners = [EngineRunner(data, steps), FitRunner(data, steps, 1), FitRunner(data, steps, 50),
             BareLoopRunner(data, steps)]
  first = {runner.name: runner.warm_up() for runner in runners}
  speeds = {runner.name: [] for runner in runners}
  for _ in range(repetitions):
    for runner in runners:
      speeds[runner.name].append(runner.run())
  return {name: Measurement(statistics.median(values), first[name])
          for name, values in speeds.items()}


def report(results: dict, batch_size: int, peak_gflops: float) -> str:
  """The table BENCHMARKS.md shows."""
  engine_speed = results["engine"].steps_per_second
  flops = flops_per_step(batch_size)
  lines = ["runner      steps/s   engine/runner   GFLOP/s   % of matmul peak   first step (s)",
           "----------  --------  --------------  --------  -----------------  --------------"]
  for name, measurement in results.items():
    gflops = flops * measurement.steps_per_second / 1e9
    lines.append(f"{name:<10}  {measurement.steps_per_second:8.1f}  "
                 f"{engine_speed / measurement.steps_per_second:14.2f}  {gflops:8.1f}  "
                 f"{100 * gflops / peak_gflops:16.1f}%  {measurement.first_step_seconds:14.2f}")
  lines.append(f"float32 XLA matmul peak (2048^3): {peak_gflops:.1f} GFLOP/s; "
               f"one step = {flops / 1e9:.3f} GFLOP; bound = {peak_gflops * 1e9 / flops:.0f} "
               "steps/s")
  return "\n".join(lines)
