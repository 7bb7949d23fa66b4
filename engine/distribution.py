"""tf.distribute strategies by name, with clear errors when hardware is missing.

`create_strategy` must run before the trunk, heads and optimizer are made, so
they can be created under its scope:

    strategy = engine.create_strategy(config)
    with strategy.scope():
      trainer = engine.Trainer(trunk=..., heads=..., optimizer=..., config=config)
"""

import functools
import json
import os

import tensorflow as tf

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")


def configure_cpu_devices(count: int):
  """Splits the CPU into `count` logical devices, to test distribution on a CPU.

  TensorFlow allows this only before it initialises its devices, i.e. before
  any op has run. If that has happened, the existing split must already match.
  """
  if count <= 1:
    return
  cpu = tf.config.list_physical_devices("CPU")[0]
  try:
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * count)
  except RuntimeError:
    existing = len(tf.config.list_logical_devices("CPU"))
    if existing != count:
      raise ValueError(
          f"--num_cpu_devices={count}: TensorFlow has already initialised {existing} "
          "logical CPU device(s). Create the strategy before running any TensorFlow op "
          "(in scripts this happens first).") from None


def _cluster_workers():
  """The number of workers TF_CONFIG names, or 0 when it is not set."""
  text = os.environ.get("TF_CONFIG")
  if not text:
    return 0
  try:
    config = json.loads(text)
    return len(config["cluster"]["worker"]) if "task" in config else -1
  except (ValueError, KeyError, TypeError):
    return -1


def _resolve_auto(num_cpu_devices):
  if tf.config.list_physical_devices("TPU"):
    return "tpu"
  if _cluster_workers() > 1:
    return "multi_worker"
  if len(tf.config.list_physical_devices("GPU")) > 1 or num_cpu_devices > 1:
    return "mirrored"
  return "one_device"


def create_strategy(name: str = "auto", tpu: str = "", num_cpu_devices: int = 0):
  """Returns the strategy `name` stands for; "auto" picks what the machine has.

  auto: a TPU if one is attached, multi_worker if TF_CONFIG names several
  workers, mirrored over all GPUs (or `num_cpu_devices` logical CPUs) if
  there are several, else one device.
  """
  if name not in STRATEGIES:
    raise ValueError(f"--strategy must be one of {STRATEGIES}; received {name!r}.")
  configure_cpu_devices(num_cpu_devices)
  if name == "auto":
    name = _resolve_auto(num_cpu_devices)
  if name == "one_device":
    device = "/gpu:0" if tf.config.list_physical_devices("GPU") else "/cpu:0"
    return tf.distribute.OneDeviceStrategy(device)
  if name == "mirrored":
    if tf.config.list_physical_devices("GPU"):
      return _mirrored(None)
    if num_cpu_devices > 1:
      return _mirrored(tuple(f"/cpu:{i}" for i in range(num_cpu_devices)))
    raise ValueError(
        "--strategy=mirrored needs GPUs, or --num_cpu_devices=N (N >= 2) logical CPU "
        "devices for testing; this machine has no GPU and num_cpu_devices="
        f"{num_cpu_devices}.")
  if name == "multi_worker":
    workers = _cluster_workers()
    if workers <= 0:
      raise ValueError(
          "--strategy=multi_worker needs TF_CONFIG set to JSON with a 'cluster' holding "
          "a 'worker' list and this process's 'task' ({'type': 'worker', 'index': i}); "
          f"received TF_CONFIG={os.environ.get('TF_CONFIG')!r}.")
    return _multi_worker()
  return _tpu_strategy(tpu)


# One strategy per device set and process: two MirroredStrategy objects over
# the same devices collide on collective-op instance keys ("Shape mismatch in
# the collective instance"), and MultiWorkerMirroredStrategy may exist once.
@functools.lru_cache(maxsize=None)
def _mirrored(devices):
  return tf.distribute.MirroredStrategy(list(devices) if devices else None)


@functools.lru_cache(maxsize=None)
def _multi_worker():
  return tf.distribute.MultiWorkerMirroredStrategy()


def _tpu_strategy(tpu: str):
  if not tpu and not tf.config.list_physical_devices("TPU"):
    raise ValueError(
        "--strategy=tpu: this machine has no TPU attached. Run on a TPU VM, or pass "
        "--tpu=<TPU name or grpc://address> for a remote TPU.")
  try:
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "local")
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
  except (ValueError, tf.errors.NotFoundError, IndexError) as error:
    raise ValueError(f"--strategy=tpu: cannot reach the TPU {tpu or 'local'!r}: {error}") from None
  return tf.distribute.TPUStrategy(resolver)


def current_or_single(name: str, tpu: str, num_cpu_devices: int):
  """The strategy of the current scope, else the default one if `name` runs one replica.

  Objects made outside any scope belong to the default strategy, which
  places work on the first GPU if there is one. A multi-replica strategy
  needs the model made inside its scope: refused with the fix.
  """
  if tf.distribute.has_strategy():
    return tf.distribute.get_strategy()
  strategy = create_strategy(name, tpu, num_cpu_devices)
  if strategy.num_replicas_in_sync == 1:
    return tf.distribute.get_strategy()
  raise ValueError(
      f"strategy={name!r} runs {strategy.num_replicas_in_sync} replicas: "
      "create the trunk, heads, optimizer and Trainer inside its scope, "
      "`with engine.create_strategy(config).scope(): ...`, so that their variables "
      "are mirrored.")


def check_created_in_scope(strategy, optimizer, heads):
  """Refuses an optimizer or heads made outside a multi-replica strategy's scope."""
  if strategy.num_replicas_in_sync == 1:
    return
  optimizer = getattr(optimizer, "inner_optimizer", optimizer)
  if getattr(optimizer, "_distribution_strategy", strategy) is not strategy:
    raise ValueError("The optimizer was created outside the strategy's scope; create it "
                     "inside `with strategy.scope():`, with the trunk and heads.")
  for head in heads:
    for metric in head.metrics:
      if metric.variables and not isinstance(metric.variables[0].value,
                                              tf.distribute.DistributedValues):
        raise ValueError(f"Head '{head.name}' was created outside the strategy's scope; "
                         "create it inside `with strategy.scope():`.")


def check_batch_divides(features_spec, replicas: int, accumulation_steps: int):
  """The global batch must split into replicas x micro-batches of one static size."""
  batch = tf.nest.flatten(features_spec)[0].shape[0]
  parts = replicas * accumulation_steps
  if batch is not None and batch % parts:
    raise ValueError(
        f"The global batch size ({batch}) must divide into {replicas} replica(s) x "
        f"accumulation_steps={accumulation_steps} equal micro-batches; "
        f"use a multiple of {parts}.")
  if batch is None and parts > 1:
    raise ValueError(
        f"With {replicas} replica(s) and accumulation_steps={accumulation_steps}, batches "
        "need a static size: batch the dataset with drop_remainder=True.")
