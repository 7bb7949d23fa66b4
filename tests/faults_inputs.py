"""Fault-table rows: settings, heads, and bad batches (structure and values)."""

import keras
import numpy as np
import tensorflow as tf

import engine
import heads
from engine.experiments import tfrecord as tfrecord_experiment
from tests.conftest import dataset_of
from tests.fault_table import SPEC
from tests.fault_table import batches as _batches
from tests.fault_table import row


# --- settings and heads -------------------------------------------------------

@row(r"learning_rate must be a finite number >= 0.0; received nan")
def learning_rate_nan(ctx):
  engine.Config(model_dir="x", learning_rate=float("nan"))


@row(r"learning_rate must be a finite number >= 0.0; received -0.1")
def learning_rate_negative(ctx):
  engine.Config(model_dir="x", learning_rate=-0.1)


@row(r"steps_per_loop must be an integer >= 1; received 0")
def steps_per_loop_zero(ctx):
  engine.Config(model_dir="x", steps_per_loop=0)


@row(r"max_consecutive_skips must be an integer >= 0; received -1")
def max_consecutive_skips_negative(ctx):
  engine.Config(model_dir="x", max_consecutive_skips=-1)


@row(r"flag --precision=float8: value should be one of")
def unknown_flag_value(ctx):
  from absl import flags  # pylint: disable=import-outside-toplevel
  holder = flags.FlagValues()
  engine.config_flags.define_flags(holder)
  holder(["train", "--model_dir=x", "--precision=float8"])


@row(r"experiment='nope' is neither a registered experiment")
def unknown_experiment(ctx):
  engine.experiment.build(engine.Config(model_dir=str(ctx.tmp_path), experiment="nope"))


@row(r"experiment 'synthetic' has no parameter depth; its parameters are")
def unknown_experiment_parameter(ctx):
  engine.experiment.build(engine.Config(model_dir=str(ctx.tmp_path),
                                        experiment_params="depth=3"))


@row(r"experiment_params heads: each head is 'name:kind:size\[:weight\]'")
def bad_heads_text(ctx):
  engine.experiment.build(engine.Config(model_dir=str(ctx.tmp_path),
                                        experiment_params="heads=digit:softmax"))


@row(r"head 'parity' has a fixed weight or schedule, but weighting=gradnorm")
def fixed_weight_with_learned_weighting(ctx):
  engine.experiment.build(engine.Config(
      model_dir=str(ctx.tmp_path),
      experiment_params="heads=digit:softmax:10,parity:softmax:2:0.5,weighting='gradnorm'"))


@row(r"holds a run of another model .*experiment_params hidden_units: '\(unset\)' -> 64")
def model_setting_changed_on_a_kept_run(ctx):
  engine.run_config.record(engine.Config(model_dir=str(ctx.tmp_path)))
  engine.run_config.record(engine.Config(model_dir=str(ctx.tmp_path),
                                         experiment_params="hidden_units=64"))


@row(r"Head 'one': num_classes must be an integer >= 2; received 1\. .*SigmoidHead\('one', 1\)")
def softmax_head_of_one_class(ctx):
  heads.SoftmaxHead("one", num_classes=1)


@row(r"best_metric='digit/acc' is not an evaluation result of these heads")
def unknown_best_metric(ctx):
  ctx.make_trainer(best_metric="digit/acc")


@row(r"model_dir '.*' is not a writable directory")
def model_dir_not_writable(ctx):
  (ctx.tmp_path / "file").write_text("in the way")
  ctx.make_trainer(model_dir=ctx.tmp_path / "file" / "run")


# --- batches: structure (before anything is built) ----------------------------

@row(r"Dataset elements must be \(features, labels\) or \(features, labels, sample_weights\)")
def element_not_a_tuple(ctx):
  x, _ = engine.data.synthetic_arrays("train", 16)
  ctx.make_trainer().train(tf.data.Dataset.from_tensor_slices(x).batch(8), steps=2)


@row(r"Head 'parity' has no labels in the batch: expected keys \['box', 'digit', 'parity'\]")
def missing_head_labels(ctx):
  ctx.make_trainer().train(_batches(mutate=lambda x, y: y.pop("parity")), steps=2)


@row(r"labels key 'color' matches no head")
def label_key_of_no_head(ctx):
  ctx.make_trainer().train(_batches(mutate=lambda x, y: y.update(color=y["parity"])), steps=2)


@row(r"Head 'digit': labels must be integer class ids .*received int64 of shape \[batch, 3\]")
def wrong_label_shape(ctx):
  ctx.make_trainer().train(_batches(mutate=lambda x, y: y.update(
      digit=np.zeros((64, 3), np.int64))), steps=2)


@row(r"Head 'digit': labels must be integer class ids .*received float32")
def wrong_label_dtype(ctx):
  ctx.make_trainer().train(_batches(mutate=lambda x, y: y.update(
      digit=y["digit"].astype(np.float32))), steps=2)


@row(r"sample_weights key 'colour' matches no head")
def sample_weight_key_of_no_head(ctx):
  ctx.make_trainer().train(_batches(weights={"colour": np.ones(64, np.float32)}), steps=2)


@row(r"Head 'parity': sample weights must have shape \[batch\]; received shape \[batch, 5\]")
def sample_weights_of_the_wrong_shape(ctx):
  ctx.make_trainer().train(_batches(weights={"parity": np.ones((64, 5), np.float32)}), steps=2)


@row(r"Head 'digit' reads input='deep'; the trunk returns the features")
def head_reading_a_missing_feature(ctx):
  class TwoFeatures(keras.layers.Layer):
    def call(self, x):
      return {"wide": x, "narrow": x[:, :4]}
  ctx.make_trainer(trunk=TwoFeatures(), head_list=[heads.SoftmaxHead("digit", 10, input="deep")]
                   ).build(SPEC)


@row(r"The global batch size \(15\) must divide into 2 replica\(s\)")
def batch_not_divisible_by_replicas(ctx):
  strategy = engine.distribution.create_strategy("mirrored", "", 2)
  with strategy.scope():
    trainer = ctx.make_trainer(strategy="mirrored", num_cpu_devices=2)
  x, y = engine.data.synthetic_arrays("train", 60)
  trainer.train(tf.data.Dataset.from_tensor_slices((x, y)).batch(15, drop_remainder=True),
                steps=2)


# --- batches: values (counted in the compiled step, raised after the loop) ----

def _train_on(ctx, mutate=None, weights=None, **config):
  ctx.make_trainer(**config).train(_batches(mutate=mutate, weights=weights), steps=4)


@row(r"At step 1, a batch failed a check: Head 'digit': class ids must be in \[0, 10\); "
     r"received values from 0 to 12\. The step was not applied and training stopped at step 0")
def class_id_out_of_range(ctx):
  _train_on(ctx, mutate=lambda x, y: y["digit"].__setitem__(3, 12))


@row(r"Head 'box': labels must be finite; received values from .* to nan")
def nan_regression_label(ctx):
  _train_on(ctx, mutate=lambda x, y: y["box"].__setitem__((3, 0), np.nan))


@row(r"Head 'digit': labels must be finite and in \[0, 1\]; received values from 0 to 1\.5")
def soft_target_outside_the_unit_interval(ctx):
  def soft(x, y):
    y["digit"] = np.eye(10, dtype=np.float32)[y["digit"]] * 1.5
  _train_on(ctx, mutate=soft)


@row(r"Head 'tags': class ids must be in \[0, 4\); received values from 0 to 4")
def sequence_label_neither_class_nor_ignore(ctx):
  x, _ = engine.data.synthetic_arrays("train", 16)
  tags = np.zeros((16, 6), np.int64)
  tags[2, 3] = 4
  trainer = ctx.make_trainer(head_list=[heads.SequenceSoftmaxHead("tags", 4)],
                             trunk=keras.Sequential([keras.layers.Dense(24),
                                                     keras.layers.Reshape((6, 4))]))
  trainer.train(dataset_of(x, {"tags": tags}, batch_size=8), steps=2)


@row(r"Head 'parity': sample weights must be finite and >= 0; received 1 bad values, from -1")
def negative_sample_weight(ctx):
  weights = np.ones(64, np.float32)
  weights[5] = -1.0
  _train_on(ctx, weights={"parity": weights})


@row(r"Head 'box': sample weights must be finite and >= 0; received 1 bad values, .*nan")
def nan_sample_weight(ctx):
  weights = np.ones(64, np.float32)
  weights[5] = np.nan
  _train_on(ctx, weights={"box": weights})


@row(r"Features 'features' hold 1 NaN or infinite values in a batch")
def nan_features(ctx):
  _train_on(ctx, mutate=lambda x, y: x.__setitem__((2, 2), np.inf))


@row(r"Head 'digit': its input features look like probabilities")
def trunk_ending_in_softmax(ctx):
  ctx.make_trainer(trunk=keras.Sequential([keras.layers.Dense(6, activation="softmax")]),
                   head_list=[heads.SoftmaxHead("digit", 10, double_softmax="raise")]).train(
                       _batches(mutate=lambda x, y: [y.pop("parity"), y.pop("box")]), steps=2)


@row(r"At step 3, the loss of head\(s\) \['box'\] became NaN or infinite\. The step was not "
     r"applied and training stopped at step 2 \(saved\)")
def nonfinite_loss(ctx):
  _train_on(ctx, mutate=lambda x, y: y["box"].__setitem__(slice(32, 34), 1e30))


@row(r"At step 5, 3 steps in a row had been skipped .*stopped at step 4 \(saved\)")
def every_step_skipped(ctx):
  x, y = engine.data.synthetic_arrays("train", 96)
  y["box"][32:] = 1e30
  ctx.make_trainer(nonfinite="skip", max_consecutive_skips=3, steps_per_loop=6).train(
      dataset_of(x, y), steps=6)


@row(r"loss finite=True skipped=1")
def skipped_steps_in_the_reported_loss(ctx):
  trainer = ctx.make_trainer(nonfinite="skip", steps_per_loop=4)
  results = trainer.train(_batches(mutate=lambda x, y: y["box"].__setitem__(
      slice(32, 34), 1e30)), steps=4)
  return f"loss finite={bool(np.isfinite(results['loss']))} skipped={int(trainer.skipped_steps)}"


@row(r"lr_schedule=piecewise needs lr_boundaries and one more lr_values")
def piecewise_schedule_without_boundaries(ctx):
  engine.Config(model_dir="x", lr_schedule="piecewise")


@row(r"step=5 loss finite=True")
def partial_final_batch_is_not_an_error(ctx):
  x, y = engine.data.synthetic_arrays("train", 72)  # Batches of 16: the fifth holds 8.
  trainer = ctx.make_trainer()
  results = trainer.train(dataset_of(x, y, repeat=False), steps=5)
  return f"step={trainer.step} loss finite={bool(np.isfinite(results['loss']))}"


@row(r"The training dataset ended at global step 4, before reaching steps=20.*repeat")
def dataset_runs_out(ctx):
  ctx.make_trainer().train(_batches(repeat=False), steps=20)


@row(r"The evaluation dataset is empty")
def empty_evaluation_dataset(ctx):
  ctx.make_trainer().evaluate(_batches(repeat=False).take(0))


@row(r"Cannot resume the input pipeline from .*ckpt-10: the training dataset differs")
def resume_with_another_pipeline(ctx):
  ctx.resumed(ctx.run_copy()).train(_batches(), steps=15)


@row(r"TFRecord file\] \[.*bad-00000-of-00001\] \[: key x must hold 2 values")
def incomplete_tfrecord(ctx):
  prefix = str(ctx.tmp_path / "bad")
  engine.data.write_tfrecords({"x": np.zeros([4, 3], np.float32),
                               "digit": np.zeros([4], np.int64)}, prefix)
  specs = engine.records.parse_feature_specs("x:float:2")
  next(iter(engine.data.tfrecord(f"{prefix}-*", specs, [heads.SoftmaxHead("digit", 10)], 2,
                                 training=False)))


@row(r"The input data is damaged .*train-00000-of-00001 \(after \d+ good records.*Training "
     r"stopped at step \d+ \(saved\)")
def corrupt_tfrecord(ctx):
  x, labels = engine.data.synthetic_arrays("train", 256)
  path, = engine.data.write_tfrecords({"features": x, **labels}, str(ctx.tmp_path / "train"))
  damaged = bytearray(open(path, "rb").read())
  damaged[int(len(damaged) * 0.9)] ^= 0xFF
  open(path, "wb").write(bytes(damaged))
  head_list = heads.parse_heads(engine.data.DEMO_HEADS)
  specs = engine.records.parse_feature_specs("features:float:32")
  trainer = ctx.make_trainer(trunk=tfrecord_experiment.FlatTrunk(specs, (16,)),
                             head_list=head_list)
  trainer.train(engine.data.tfrecord(path, specs, head_list, batch_size=16, training=True,
                                     shuffle_buffer=1), steps=100)
