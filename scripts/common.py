"""Flags and wiring shared by the scripts: the model, where it lives, and its eval data.

train.py, evaluate.py, export.py and calibrate.py rebuild the same model from
the same flags (defaults: the demo), so one `--flagfile` serves them all.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import flags  # pylint: disable=g-import-not-at-top
import keras  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

import engine  # pylint: disable=g-import-not-at-top
import heads  # pylint: disable=g-import-not-at-top

MODEL_DIR = flags.DEFINE_string("model_dir", "runs/demo", "Checkpoints, summaries and exports.")
BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Global batch size.", lower_bound=1)
LEARNING_RATE = flags.DEFINE_float("learning_rate", 1e-3, "AdamW learning rate.", lower_bound=0.0)
HEADS = flags.DEFINE_string(
    "heads", engine.data.DEMO_HEADS,
    "Comma-separated heads, each name:kind:size[:weight] (kinds: softmax, sigmoid, sparsemax, "
    "entmax, regression).")
WEIGHTING = flags.DEFINE_enum(
    "weighting", "static", list(heads.specs.WEIGHTINGS),
    "How head losses are weighted: static (--heads weights, --weight_schedules), uncertainty "
    "(learned log-variances), gradnorm or dwa.")
WEIGHT_SCHEDULES = flags.DEFINE_list(
    "weight_schedules", [], "head=schedule items: linear:START:END:RAMP_STEPS[:WARMUP] or "
    "piecewise:B1/B2:V0/V1/V2 (static weighting).")
GRADNORM_ALPHA = flags.DEFINE_float("gradnorm_alpha", 1.5, "GradNorm's asymmetry alpha.",
                                    lower_bound=0.0)
DWA_TEMPERATURE = flags.DEFINE_float("dwa_temperature", 2.0, "DWA's softmax temperature.",
                                     lower_bound=1e-6)
DWA_PERIOD = flags.DEFINE_integer("dwa_period", 100, "Steps per DWA loss-averaging period.",
                                  lower_bound=1)
PCGRAD = flags.DEFINE_boolean(
    "pcgrad", False, "Combine the heads' gradients on the shared trunk with PCGrad.")
HIDDEN_UNITS = flags.DEFINE_list("hidden_units", ["128", "128"], "Widths of the trunk's Dense layers.")
NUM_FEATURES = flags.DEFINE_integer(
    "num_features", engine.data.NUM_FEATURES, "Length of the `features` float list in TFRecords.",
    lower_bound=1)
EVAL_DATA = flags.DEFINE_string(
    "eval_data", None, "TFRecord file pattern for evaluation; unset: the synthetic eval split.")
EVAL_STEPS = flags.DEFINE_integer(
    "eval_steps", None, "Batches per evaluation; unset: the whole eval data.", lower_bound=1)
DETERMINISTIC = flags.DEFINE_boolean(
    "deterministic", False, "Op determinism and seeds: reruns and resumed runs give "
    "bitwise-identical weights (slower on GPUs).")
JIT_COMPILE = flags.DEFINE_boolean("jit_compile", True, "Compile the steps with XLA.")
SEED = flags.DEFINE_integer("seed", 0, "Seed for initial weights and shuffling.", lower_bound=0)
PRECISION = flags.DEFINE_enum(
    "precision", "float32", list(engine.precision.PRECISIONS),
    "float32, mixed_float16 (GPU, with dynamic loss scaling) or mixed_bfloat16 (TPU, CPU).")
STRATEGY = flags.DEFINE_enum(
    "strategy", "auto", list(engine.distribution.STRATEGIES),
    "tf.distribute strategy; auto picks TPU, multi-worker (TF_CONFIG), mirrored or one device.")
TPU = flags.DEFINE_string("tpu", "", "TPU name or grpc:// address; empty on a TPU VM.")
NUM_CPU_DEVICES = flags.DEFINE_integer(
    "num_cpu_devices", 0, "Split the CPU into this many logical devices (to test mirrored).",
    lower_bound=0)

flags.register_validator(
    "weight_schedules", lambda items: all(item.count("=") == 1 for item in items),
    message="--weight_schedules items are head=schedule, e.g. box=linear:0:0.25:1000:100.")
flags.register_validator(
    "hidden_units", lambda units: all(u.isdigit() and int(u) > 0 for u in units),
    message="--hidden_units must be positive integers, e.g. 128,128.")

SYNTHETIC_EVAL_EXAMPLES = 4096


def make_trainer(**config_fields):
  """The Trainer these flags describe, made under its strategy: (trainer, heads)."""
  config = engine.Config(
      model_dir=MODEL_DIR.value, eval_steps=EVAL_STEPS.value, jit_compile=JIT_COMPILE.value,
      seed=SEED.value, deterministic=DETERMINISTIC.value, precision=PRECISION.value, strategy=STRATEGY.value, tpu=TPU.value,
      num_cpu_devices=NUM_CPU_DEVICES.value, pcgrad=PCGRAD.value, **config_fields)
  strategy = engine.create_strategy(config)  # Before any other op: it may split the CPU.
  engine.set_precision(config.precision)  # Before any layer is made.
  keras.utils.set_random_seed(config.seed)  # Before any layer: initializers draw seeds when made.
  with strategy.scope():  # Every variable, metrics' too, is made under the strategy.
    head_list = heads.parse_heads(
        HEADS.value, flag="--heads", weighting=WEIGHTING.value,
        schedules=dict(item.split("=") for item in WEIGHT_SCHEDULES.value),
        gradnorm_alpha=GRADNORM_ALPHA.value, dwa_temperature=DWA_TEMPERATURE.value,
        dwa_period=DWA_PERIOD.value)
    trainer = engine.Trainer(
        trunk=keras.Sequential([keras.layers.Dense(int(units), activation="relu")
                                for units in HIDDEN_UNITS.value]),
        heads=head_list, optimizer=keras.optimizers.AdamW(LEARNING_RATE.value), config=config)
  return trainer, head_list


def eval_data(head_list):
  """--eval_data's TFRecords, or the synthetic eval split when it is unset."""
  if EVAL_DATA.value:
    return engine.data.tfrecord(EVAL_DATA.value, head_list, NUM_FEATURES.value,
                                BATCH_SIZE.value, training=False)
  return engine.data.synthetic("eval", BATCH_SIZE.value, num_examples=SYNTHETIC_EVAL_EXAMPLES)


def restore_latest(trainer):
  """Restores the newest checkpoint of --model_dir without reading any data."""
  trainer.build(tf.TensorSpec([None, NUM_FEATURES.value], tf.float32))
  if trainer.latest_checkpoint is None:
    raise ValueError(f"No checkpoint in --model_dir={MODEL_DIR.value}: train first "
                     "(scripts/train.py with the same --model_dir and model flags).")
