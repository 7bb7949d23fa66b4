"""Experiments: each built-in one learns; a user's module trains through the scripts."""

import os
import re
import shutil
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import plugin_data_pb2

import engine
from tests import early_runs
from tests import warm_python

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _losses_before_and_after(model_dir, experiment, params, steps, batch_size=32):
  config = engine.Config(model_dir=model_dir, experiment=experiment, experiment_params=params,
                         strategy="one_device", jit_compile=False, head_diagnostics=False,
                         steps_per_loop=steps // 2, learning_rate=3e-3, batch_size=batch_size)
  trainer, built = engine.experiment.build(config)
  assert trainer.metric_names  # Known before any data (HParams are written then).
  eval_data = built.eval_data(batch_size)
  before = trainer.evaluate(eval_data, steps=4)
  after = trainer.train(built.train_data(batch_size, 0), steps=steps)
  after = trainer.evaluate(eval_data, steps=4)
  return trainer, before, after


@pytest.mark.parametrize("experiment,params,steps", [
    ("synthetic", "hidden_units=32,num_train_examples=1024", 60),
    ("images", "num_train_examples=512,num_eval_examples=128", 60),
    ("sequences", "large_vocab=True,num_train_examples=256,num_eval_examples=128", 20),
    ("sequences", "trunk='gru',num_train_examples=256,num_eval_examples=128", 20),
])
def test_each_built_in_experiment_learns_every_head(tmp_path, experiment, params, steps):
  trainer, before, after = _losses_before_and_after(str(tmp_path), experiment, params, steps)
  for name in trainer.model.head_names:
    assert after[f"{name}/loss"] < 0.8 * before[f"{name}/loss"], (name, before, after)


def test_the_tfrecord_experiment_reads_written_shards_and_learns(tmp_path):
  for split, count in (("train", 1024), ("eval", 256)):
    x, labels = engine.data.synthetic_arrays(split, count)
    engine.data.write_tfrecords({"features": x, **labels}, str(tmp_path / split), num_shards=2)
  params = (f"train_data='{tmp_path}/train-*',eval_data='{tmp_path}/eval-*',"
            "hidden_units=32,heads='digit:softmax:10,box:regression:4'")
  trainer, before, after = _losses_before_and_after(str(tmp_path / "model"), "tfrecord", params,
                                                    60)
  assert trainer.model.head_names == ["digit", "box"]
  assert after["digit/loss"] < 0.8 * before["digit/loss"]
  assert after["box/loss"] < 0.8 * before["box/loss"]


_USER_MODULE = textwrap.dedent('''
    """A user's experiment, outside the project: two named inputs, its own pipeline."""
    import keras
    import numpy as np
    import tensorflow as tf

    import engine
    import heads


    class TwoInputTrunk(keras.layers.Layer):
      def __init__(self, width, **kwargs):
        super().__init__(**kwargs)
        self.numbers = keras.layers.Dense(width, activation="relu")
        self.category = keras.layers.Embedding(5, width)

      def call(self, features):
        return keras.ops.concatenate(
            [self.numbers(features["numbers"]), self.category(features["category"])], axis=-1)


    def arrays(count, seed):
      rng = np.random.RandomState(seed)
      numbers = rng.normal(size=(count, 4)).astype("float32")
      category = rng.randint(5, size=count)
      label = ((numbers[:, 0] > 0).astype("int64") + (category >= 3)) % 3
      return {"numbers": numbers, "category": category}, {"kind": label}


    def make(width=8, count=512):
      def batches(seed, batch_size, repeat):
        dataset = tf.data.Dataset.from_tensor_slices(arrays(count, seed))
        if repeat:
          dataset = dataset.shuffle(count, seed=seed).repeat()
        return dataset.batch(batch_size, drop_remainder=True)
      return engine.Experiment(
          trunk=TwoInputTrunk(width), heads=[heads.SoftmaxHead("kind", 3)],
          train_data=lambda batch_size, seed: batches(1, batch_size, True),
          eval_data=lambda batch_size: batches(2, batch_size, False))
''')


def _python_path(directory):
  """PYTHONPATH with the user's module directory first."""
  return os.pathsep.join(filter(None, [directory, os.environ.get("PYTHONPATH")]))


def _module_dir(model_dir):
  directory = model_dir + "-module"
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "user_experiment.py"), "w") as file:
    file.write(_USER_MODULE)
  return directory


_USER_RUN = early_runs.register(
    "user_experiment_run",
    lambda model_dir: [os.path.join(_ROOT, "scripts", "train.py"), f"--model_dir={model_dir}",
                       "--experiment=user_experiment:make", "--experiment_params=width=16",
                       "--train_steps=200", "--steps_per_loop=100", "--batch_size=32",
                       "--nohead_diagnostics", "--nojit_compile", "--learning_rate=0.01"],
    env=lambda model_dir: {"PYTHONPATH": _python_path(_module_dir(model_dir))})


@pytest.fixture(scope="module")
def user_experiment_run():
  model_dir, result = _USER_RUN.result()
  assert result.returncode == 0, result.stderr[-3000:]
  yield model_dir
  shutil.rmtree(model_dir + "-module", ignore_errors=True)  # early_runs removes model_dir.


def _script(name, model_dir):
  return warm_python.run(
      [sys.executable, os.path.join(_ROOT, "scripts", name), f"--model_dir={model_dir}"],
      capture_output=True, text=True, cwd=_ROOT, timeout=300, check=False,
      env={**os.environ, "PYTHONPATH": _python_path(model_dir + "-module")})


def test_a_user_module_trains_with_its_parameters_in_hparams(user_experiment_run):
  model_dir = user_experiment_run
  accumulator = event_accumulator.EventAccumulator(os.path.join(model_dir, "eval"),
                                                   size_guidance={"tensors": 0})
  accumulator.Reload()
  contents = [accumulator.SummaryMetadata(tag).plugin_data.content
              for tag in accumulator.Tags()["tensors"]
              if accumulator.SummaryMetadata(tag).plugin_data.plugin_name == "hparams"]
  hparams = {}
  for content in contents:
    data = plugin_data_pb2.HParamsPluginData.FromString(content)
    hparams.update({key: value for key, value in data.session_start_info.hparams.items()})
  assert hparams["experiment_params/width"].number_value == 16
  assert hparams["experiment_params/count"].number_value == 512  # Its default, resolved.
  assert hparams["experiment"].string_value == "user_experiment:make"


def test_evaluate_and_export_need_only_the_model_dir(user_experiment_run):
  model_dir = user_experiment_run
  evaluation = _script("evaluate.py", model_dir)
  assert evaluation.returncode == 0, evaluation.stderr[-3000:]
  assert re.search(r"^kind\s+accuracy\s+0\.\d+$", evaluation.stdout, re.M), evaluation.stdout
  exported = _script("export.py", model_dir)
  assert exported.returncode == 0, exported.stderr[-3000:]
  serving = tf.saved_model.load(exported.stdout.strip().splitlines()[-1])
  outputs = serving.signatures["serving_default"](
      numbers=tf.zeros([2, 4]), category=tf.constant([1, 4], tf.int64))
  assert outputs["kind/probabilities"].shape == (2, 3)
  np.testing.assert_allclose(np.sum(outputs["kind/probabilities"], axis=-1), 1.0, rtol=1e-5)
