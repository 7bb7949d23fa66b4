"""Training throughput of the engine against Keras `fit` and a bare XLA loop.

Four runners train the same model on the same in-memory batches:
- engine: `engine.Trainer` with its defaults, as users run it (summaries,
  progress line, per-head diagnostics, the checkpoint at the end of `train`,
  10 steps per XLA program), `steps_per_loop=50`;
- fit_spe1 / fit_spe50: Keras 3 `Model.fit`, `jit_compile=True`,
  `steps_per_execution` 1 or 50, with the same per-output metrics the engine
  keeps in training (accuracy for the classification heads, MAE for the
  regression head);
- bare_loop: a hand-written XLA `GradientTape` step in a `tf.range` loop of 50
  steps per `tf.function` call, without metrics, one XLA launch a step: the
  floor the targets are set against;
- bare_loop10: the same step, 10 per XLA launch (an XLA while loop over 10
  stacked batches), as the engine runs them: what launching less buys
  without the engine's work (information; no target).
Steps per second: the runners are interleaved in one process and repeated
(this machine is noisy); the best repetition counts, after each runner's
warm-up. First call: each runner in a fresh process, from building the model
to the end of its first 50 steps (tracing, compilation and that first loop),
the best of as many interleaved fresh processes as there are repetitions;
every runner's libraries (TensorFlow, Keras, the engine) are imported before
the clock starts.
"""

import dataclasses
import multiprocessing
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

import engine
import heads

OUTPUTS = {"digit": 10, "parity": 2, "box": 4}
LOSS_WEIGHTS = {"digit": 1.0, "parity": 0.5, "box": 0.25}
INNER_STEPS = 50


@dataclasses.dataclass(frozen=True)
class Model:
  """A trunk of Dense layers on `features` inputs, with the three heads, in a precision."""
  features: int
  hidden: tuple
  precision: str = "float32"  # Or "mixed_float16", "mixed_bfloat16".

  @property
  def name(self) -> str:
    return (f"{self.features} features, {len(self.hidden)} x Dense({self.hidden[0]}), "
            f"{self.precision}")


MODELS = (Model(256, (512, 512)), Model(32, (64, 64)))


@dataclasses.dataclass
class Measurement:
  steps_per_second: float
  first_call_seconds: float


def dataset(model: Model, batch_size: int, batches: int = 64) -> tf.data.Dataset:
  """The same in-memory batches for every runner, repeated."""
  rng = np.random.default_rng(0)
  n = batch_size * batches
  x = rng.normal(size=(n, model.features)).astype(np.float32)
  labels = {"digit": rng.integers(0, 10, n), "parity": rng.integers(0, 2, n),
            "box": rng.normal(size=(n, 4)).astype(np.float32)}
  return tf.data.Dataset.from_tensor_slices((x, labels)).batch(
      batch_size, drop_remainder=True).cache().repeat().prefetch(tf.data.AUTOTUNE)


def flops_per_step(model: Model, batch_size: int) -> float:
  """Matmul FLOPs of one training step: 2 forward + 4 backward per multiply-add."""
  widths = (model.features, *model.hidden)
  multiply_adds = sum(a * b for a, b in zip(widths, widths[1:]))
  multiply_adds += model.hidden[-1] * sum(OUTPUTS.values())
  return 6.0 * batch_size * multiply_adds


def _trunk(model: Model):
  return keras.Sequential([keras.layers.Dense(units, activation="relu")
                           for units in model.hidden])


class EngineRunner:
  name = "engine"

  def __init__(self, model: Model, data):
    self._data = data
    # Removed when the runner goes (or the process ends), with its checkpoints and summaries.
    self._model_dir = tempfile.TemporaryDirectory(prefix="benchmark-engine-",
                                                  ignore_cleanup_errors=True)
    keras.utils.set_random_seed(0)
    self._trainer = engine.Trainer(
        trunk=_trunk(model),
        heads=[heads.SoftmaxHead(name, n, weight=LOSS_WEIGHTS[name]) if name != "box"
               else heads.RegressionHead(name, n, weight=LOSS_WEIGHTS[name])
               for name, n in OUTPUTS.items()],
        optimizer=keras.optimizers.Adam(1e-3),
        config=engine.Config(model_dir=self._model_dir.name, steps_per_loop=INNER_STEPS,
                             precision=model.precision))

  def first_call(self):
    self._trainer.train(self._data, steps=INNER_STEPS)

  def warm_up(self):
    """To the first diagnostic step: its program compiles when first used."""
    self._trainer.train(self._data, steps=self._trainer.config.diagnostics_every)

  def run(self, steps: int):
    self._trainer.train(self._data, steps=self._trainer.step + steps)


class FitRunner:
  """Keras 3 `Model.fit` with the same losses, loss weights and training metrics."""

  def __init__(self, model: Model, data, steps_per_execution: int):
    self.name = f"fit_spe{steps_per_execution}"
    keras.utils.set_random_seed(0)
    inputs = keras.Input([model.features])
    shared = _trunk(model)(inputs)
    outputs = {name: keras.layers.Dense(n, name=name)(shared) for name, n in OUTPUTS.items()}
    self._model = keras.Model(inputs, outputs)
    self._model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss={"digit": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              "parity": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              "box": keras.losses.MeanSquaredError()},
        loss_weights=LOSS_WEIGHTS, jit_compile=True, steps_per_execution=steps_per_execution,
        metrics={"digit": ["accuracy"], "parity": ["accuracy"], "box": ["mae"]})
    self._data = data

  def first_call(self):
    self.run(INNER_STEPS)

  def warm_up(self):
    self.run(INNER_STEPS)

  def run(self, steps: int):
    self._model.fit(self._data, steps_per_epoch=steps, epochs=1, verbose=0)


class BareLoopRunner:
  """A hand-written XLA step, 50 per `tf.function` call, no metrics: the floor.

  `steps_per_program` > 1: that many steps per XLA launch, on stacked batches.
  """

  def __init__(self, model: Model, data, steps_per_program: int = 1):
    self.name = "bare_loop" if steps_per_program == 1 else f"bare_loop{steps_per_program}"
    self._steps_per_program = steps_per_program
    keras.utils.set_random_seed(0)
    self._trunk = _trunk(model)
    self._heads = {name: keras.layers.Dense(n) for name, n in OUTPUTS.items()}
    self._optimizer = keras.optimizers.Adam(1e-3)
    self._trunk(tf.zeros([1, model.features]))
    shared = tf.zeros([1, model.hidden[-1]])
    for layer in self._heads.values():
      layer(shared)
    self._variables = self._trunk.trainable_variables + [
        v for layer in self._heads.values() for v in layer.trainable_variables]
    self._optimizer.build(self._variables)
    self._iterator = iter(data)
    self._loop = tf.function(self._loop_fn)
    self._step = tf.function(self._step_fn, jit_compile=True)
    self._steps = tf.function(self._steps_fn, jit_compile=True)

  def _step_fn(self, x, labels):
    with tf.GradientTape() as tape:
      shared = self._trunk(x, training=True)
      loss = 0.0
      outputs = {name: tf.cast(layer(shared), tf.float32)  # float16 under mixed precision.
                 for name, layer in self._heads.items()}
      for name in ("digit", "parity"):
        loss += LOSS_WEIGHTS[name] * tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels[name], outputs[name]))
      loss += LOSS_WEIGHTS["box"] * tf.reduce_mean(tf.square(labels["box"] - outputs["box"]))
    self._optimizer.apply(tape.gradient(loss, self._variables), self._variables)

  def _steps_fn(self, batches):
    x, labels = tf.nest.map_structure(lambda *parts: tf.stack(parts), *batches)
    for k in tf.range(self._steps_per_program):
      self._step_fn(x[k], {name: value[k] for name, value in labels.items()})

  def _loop_fn(self, iterator, steps):
    if self._steps_per_program == 1:
      for _ in tf.range(steps):
        x, labels = next(iterator)
        self._step(x, labels)
    else:  # `steps` is a multiple of steps_per_program here.
      for _ in tf.range(steps // self._steps_per_program):
        self._steps([next(iterator) for _ in range(self._steps_per_program)])

  def first_call(self):
    self.run(INNER_STEPS)

  def warm_up(self):
    self.run(INNER_STEPS)

  def run(self, steps: int):
    for _ in range(steps // INNER_STEPS):
      self._loop(self._iterator, tf.constant(INNER_STEPS))
    self._optimizer.iterations.numpy()  # Waits for the last step.


RUNNERS = ("engine", "fit_spe1", "fit_spe50", "bare_loop", "bare_loop10")


def make_runner(name: str, model: Model, data):
  """The runner `name`, its layers made under the model's precision policy."""
  keras.mixed_precision.set_global_policy(model.precision)
  if name == "engine":
    return EngineRunner(model, data)
  if name.startswith("fit_spe"):
    return FitRunner(model, data, int(name[len("fit_spe"):]))
  return BareLoopRunner(model, data, int(name[len("bare_loop"):] or 1))


def _first_call_child(name, model, batch_size, queue):
  data = dataset(model, batch_size)
  next(iter(data))  # The input pipeline is not what is measured.
  start = time.perf_counter()
  make_runner(name, model, data).first_call()
  queue.put(time.perf_counter() - start)


def first_call_seconds(name: str, model: Model, batch_size: int) -> float:
  """Building the model and its first 50 steps, in a fresh process."""
  context = multiprocessing.get_context("spawn")
  queue = context.Queue()
  process = context.Process(target=_first_call_child, args=(name, model, batch_size, queue))
  process.start()
  seconds = queue.get()
  process.join()
  if process.exitcode != 0:
    raise RuntimeError(f"The first call of {name} failed (exit code {process.exitcode}).")
  return seconds


def run(model: Model, batch_size: int = 256, steps: int = 2000, repetitions: int = 5,
        fresh_processes: bool = True) -> dict:
  """{runner: Measurement}: the best of interleaved repetitions.

  First calls are timed in fresh processes, interleaved, the best of
  `repetitions` too (one fresh process's first call moved by up to 1.6x
  between runs on this host); with `fresh_processes=False` (a quick check
  that everything runs) once, in this process, as each runner warms up, so
  the first runner also pays for the process's own first compilation.
  """
  first = {}
  for _ in range(repetitions if fresh_processes else 0):
    for name in RUNNERS:
      seconds = first_call_seconds(name, model, batch_size)
      first[name] = min(first.get(name, seconds), seconds)
  data = dataset(model, batch_size)
  runners = [make_runner(name, model, data) for name in RUNNERS]
  for runner in runners:
    start = time.perf_counter()
    runner.first_call()  # Warm-up: tracing and compilation are not in the steps/s.
    first.setdefault(runner.name, time.perf_counter() - start)
    runner.warm_up()  # The engine's diagnostic program compiles at its first use.
  steps -= steps % INNER_STEPS
  speeds = {name: 0.0 for name in RUNNERS}
  for _ in range(repetitions):
    for runner in runners:
      start = time.perf_counter()
      runner.run(steps)
      speeds[runner.name] = max(speeds[runner.name], steps / (time.perf_counter() - start))
  return {name: Measurement(speeds[name], first[name]) for name in RUNNERS}


def matmul_gflops(size: int = 2048, repeats: int = 10) -> float:
  """The machine's float32 matmul rate under XLA, the bound for these models."""
  a = tf.random.normal([size, size])
  matmul = tf.function(lambda a: tf.matmul(a, a), jit_compile=True)
  matmul(a).numpy()
  start = time.perf_counter()
  for _ in range(repeats):
    result = matmul(a)
  result.numpy()
  return 2.0 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def report(model: Model, results: dict, batch_size: int, peak_gflops: float) -> str:
  """The table BENCHMARKS.md shows, with the engine's ratios and the targets."""
  engine_result = results["engine"]
  flops = flops_per_step(model, batch_size)
  lines = [f"model: {model.name}, batch {batch_size}",
           "runner      steps/s   engine/runner   GFLOP/s   first call (s)   engine/runner first",
           "----------  --------  --------------  --------  ---------------  -------------------"]
  for name, measurement in results.items():
    gflops = flops * measurement.steps_per_second / 1e9
    lines.append(f"{name:<10}  {measurement.steps_per_second:8.1f}  "
                 f"{engine_result.steps_per_second / measurement.steps_per_second:14.2f}  "
                 f"{gflops:8.1f}  {measurement.first_call_seconds:15.2f}  "
                 f"{engine_result.first_call_seconds / measurement.first_call_seconds:19.2f}")
  fastest_fit = max(results["fit_spe1"].steps_per_second, results["fit_spe50"].steps_per_second)
  bare = results["bare_loop"]
  checks = [("engine/bare_loop steps/s", engine_result.steps_per_second / bare.steps_per_second,
             ">=", 0.95),
            ("engine/fastest fit steps/s", engine_result.steps_per_second / fastest_fit,
             ">=", 1.05),
            ("engine/bare_loop first call",
             engine_result.first_call_seconds / bare.first_call_seconds, "<=", 2.0)]
  for what, ratio, relation, target in checks:
    met = ratio >= target if relation == ">=" else ratio <= target
    lines.append(f"target {what} {relation} {target}: {ratio:.2f} ({'met' if met else 'MISSED'})")
  lines.append(f"float32 XLA matmul peak (2048^3): {peak_gflops:.1f} GFLOP/s; one step = "
               f"{flops / 1e9:.3f} GFLOP; bound = {peak_gflops * 1e9 / flops:.0f} steps/s")
  return "\n".join(lines)
