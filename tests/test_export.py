"""Trainer.export: a SavedModel that TensorFlow's own tools load and run like `predict`."""

import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import engine
from engine import export as export_lib
from tests.conftest import small_trunk
import heads

_FEATURES = np.random.RandomState(0).normal(size=(3, engine.data.NUM_FEATURES)).astype(np.float32)


def _flat(predictions):
  return {f"{head}/{key}": value for head, outputs in predictions.items()
          for key, value in outputs.items()}


@pytest.fixture(scope="module")
def exported(trained_demo):
  trainer, _ = trained_demo
  return trainer.export(), _flat(trainer.predict(_FEATURES))


def test_export_goes_to_a_numbered_version_under_model_dir(trained_demo, exported):
  trainer, _ = trained_demo
  path, _ = exported
  assert path == os.path.join(trainer.config.model_dir, "export", str(trainer.step))
  assert sorted(os.listdir(os.path.dirname(path))) == [str(trainer.step)]  # Nothing left aside.


def test_loaded_signature_returns_every_head_output_as_predict_does(exported):
  path, expected = exported
  signature = tf.saved_model.load(path).signatures["serving_default"]
  outputs = signature(features=tf.constant(_FEATURES))
  assert sorted(outputs) == sorted(expected) == [
      "box/values", "digit/classes", "digit/probabilities", "parity/classes",
      "parity/probabilities"]
  for key, value in expected.items():
    np.testing.assert_allclose(outputs[key].numpy(), value, rtol=1e-5, atol=1e-6, err_msg=key)
  np.testing.assert_allclose(outputs["digit/probabilities"].numpy().sum(axis=1), 1.0, rtol=1e-6)


def _saved_model_cli_outputs(path, features, tmp_path):
  """Runs `saved_model_cli run` and parses the arrays it prints per output key."""
  inputs = tmp_path / "features.npy"
  np.save(inputs, features)
  cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
  result = subprocess.run(
      [cli, "run", "--dir", path, "--tag_set", "serve", "--signature_def", "serving_default",
       "--inputs", f"features={inputs}"], capture_output=True, text=True, timeout=120,
      check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  blocks = re.split(r"Result for output key (\S+):\n", result.stdout)[1:]
  return {key: np.array(text.replace("[", " ").replace("]", " ").split(), np.float64)
          for key, text in zip(blocks[::2], blocks[1::2])}


def test_saved_model_cli_runs_the_export_like_predict(exported, tmp_path):
  path, expected = exported
  outputs = _saved_model_cli_outputs(path, _FEATURES, tmp_path)
  assert sorted(outputs) == sorted(expected)
  for key, value in expected.items():
    np.testing.assert_allclose(outputs[key], np.ravel(value), rtol=1e-4, atol=1e-6,
                               err_msg=key)


def test_export_from_a_checkpoint_needs_no_training_data(trained_demo, exported, tmp_path):
  trainer, _ = trained_demo
  _, expected = exported
  restored = engine.Trainer(
      trunk=small_trunk(32), heads=heads.parse_heads(engine.data.DEMO_HEADS),
      optimizer=keras.optimizers.Adam(), config=engine.Config(model_dir=trainer.config.model_dir))
  restored.build(tf.TensorSpec([None, engine.data.NUM_FEATURES], tf.float32))
  assert restored.step == trainer.step
  path = restored.export(str(tmp_path / "from_checkpoint"))
  outputs = tf.saved_model.load(path).signatures["serving_default"](
      features=tf.constant(_FEATURES))
  for key, value in expected.items():
    np.testing.assert_allclose(outputs[key].numpy(), value, rtol=1e-5, atol=1e-6, err_msg=key)


def test_a_crash_mid_export_leaves_the_previous_export_intact(trained_demo, tmp_path,
                                                               monkeypatch):
  trainer, _ = trained_demo
  path = trainer.export(str(tmp_path / "serving"))
  before = sorted(os.listdir(path))

  def crash(self, filepath, **kwargs):
    tf.io.gfile.makedirs(os.path.join(filepath, "variables"))  # Half a SavedModel...
    raise OSError("disk full")  # ...then the crash.
  # ExportArchive() returns a backend subclass: patch that.
  monkeypatch.setattr(type(keras.export.ExportArchive()), "write_out", crash)
  with pytest.raises(OSError, match="disk full"):
    trainer.export(path)
  assert sorted(os.listdir(path)) == before
  tf.saved_model.load(path).signatures["serving_default"](features=tf.constant(_FEATURES))
  monkeypatch.undo()
  assert trainer.export(path) == path  # The next export cleans up and replaces it.
  assert sorted(os.listdir(tmp_path)) == ["serving"]


def test_export_before_any_variable_exists_says_what_to_do(make_trainer):
  with pytest.raises(ValueError, match=r"build\(features_spec\)"):
    make_trainer().export()


def test_dict_features_keep_their_names_in_the_signature():
  spec = {"image": tf.TensorSpec([8, 4], tf.float32), "ids": tf.TensorSpec([8, 3], tf.int64)}
  signature = export_lib.serving_signature(spec)
  assert signature == {"image": tf.TensorSpec([None, 4], tf.float32, name="image"),
                       "ids": tf.TensorSpec([None, 3], tf.int64, name="ids")}


def test_metric_files_are_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
  path = str(tmp_path / "eval" / "metrics.json")
  engine.atomic.write_json(path, {"step": 1})
  real_gfile = tf.io.gfile.GFile

  class FailingFile(real_gfile):
    def write(self, data):
      super().write(data[:5])  # Half the file, then the crash.
      raise OSError("disk full")
  monkeypatch.setattr(tf.io.gfile, "GFile", FailingFile)
  with pytest.raises(OSError, match="disk full"):
    engine.atomic.write_json(path, {"step": 2})
  monkeypatch.undo()
  assert json.loads(open(path).read()) == {"step": 1}


def test_a_best_metric_no_head_reports_is_refused_naming_the_choices(make_trainer):
  with pytest.raises(ValueError, match=r"best_metric='digit/acc' is not an evaluation result "
                                       r"of these heads; choose one of \[.*'digit/accuracy'"):
    make_trainer(best_metric="digit/acc")


def test_an_export_of_a_step_already_exported_gets_the_next_version(tmp_path):
  from engine import export as export_lib  # pylint: disable=import-outside-toplevel
  assert export_lib.new_version_path(str(tmp_path), 600).endswith("export/600")
  for version in ("600", "601", ".600.tmp-1", "best"):
    (tmp_path / "export" / version).mkdir(parents=True)
  assert export_lib.new_version_path(str(tmp_path), 600).endswith("export/602")
  assert export_lib.new_version_path(str(tmp_path), 900).endswith("export/900")
