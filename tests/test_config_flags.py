"""One definition per setting: Config fields, their flags, the flagfile a run keeps."""

import dataclasses
import os
import sys

from absl import flags
import pytest

import engine
from engine import config_flags
from engine import run_config

from tests import warm_python

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _flags():
  holder = flags.FlagValues()
  config_flags.define_flags(holder)
  return holder


def test_each_config_field_has_exactly_one_flag_of_its_name_default_and_choices():
  holder = _flags()
  names = [field.name for field in dataclasses.fields(engine.Config)]
  assert sorted(holder) == sorted(names)
  for field in dataclasses.fields(engine.Config):
    flag = holder[field.name]
    default = None if field.default is dataclasses.MISSING else field.default
    assert flag.default == (list(default) if isinstance(default, tuple) else default), field.name
    assert flag.help.endswith(field.metadata["help"])
    if field.metadata["choices"]:
      assert flag.parser.enum_values == list(field.metadata["choices"])
  assert holder["model_dir"].default is None  # Required: mark_flag_as_required.


def test_the_scripts_define_no_setting_of_their_own():
  """Every script flag that is a Config field comes from engine.config_flags."""
  code = ("import sys; sys.path[:0] = ['scripts', '.']; import train, evaluate, export, calibrate;"
          "from absl import flags; import engine.config_flags as c;"
          "print(sorted(f.name for m, fl in flags.FLAGS.flags_by_module_dict().items() "
          "if m != c.__name__ for f in fl if f.name in c.NAMES))")
  result = warm_python.run([sys.executable, "-c", code], capture_output=True, text=True,
                           cwd=_ROOT, timeout=120, check=True)
  assert result.stdout.strip().splitlines()[-1] == "[]"


def test_help_lists_the_engine_flags():
  result = warm_python.run([sys.executable, "scripts/train.py", "--helpshort"],
                           capture_output=True, text=True, cwd=_ROOT, timeout=120, check=False)
  for name in ("--model_dir", "--experiment", "--experiment_params", "--learning_rate",
               "--lr_schedule", "--strategy", "--precision", "--train_steps"):
    assert name in result.stdout, result.stdout[-2000:]


def test_the_flagfile_reads_back_as_the_same_config(tmp_path):
  config = engine.Config(model_dir=str(tmp_path), experiment_params="heads='a:softmax:2,b:sigmoid:3'"
                         ",hidden_units=(8, 4)", profile_steps=(2, 5), lr_schedule="piecewise",
                         lr_boundaries=(10, 20), lr_values=(0.1, 0.01, 0.001), clip_norm=1.5,
                         seed=None, eval_steps=None, best_metric="a/accuracy")
  text = config_flags.flagfile_text(config)
  assert "--lr_boundaries=10,20" in text and "# --seed unset" in text
  assert engine.Config(**config_flags.parse_flagfile(text)) == config
  (tmp_path / "run.flags").write_text(text)  # absl's own --flagfile reads it too.
  holder = _flags()
  holder(["x", f"--flagfile={tmp_path / 'run.flags'}"])
  assert holder["lr_values"].value == ["0.1", "0.01", "0.001"]


@pytest.mark.parametrize("text,expected", [
    ("", {}),
    ("heads=a:softmax:2,b:softmax:3,hidden_units=(64,64)",
     {"heads": "a:softmax:2,b:softmax:3", "hidden_units": (64, 64)}),
    ("weight_schedules={'box': 'linear:0:1:10', 'd': 'x'},flag=True,rate=1e-3,name='a,b=c'",
     {"weight_schedules": {"box": "linear:0:1:10", "d": "x"}, "flag": True, "rate": 1e-3,
      "name": "a,b=c"}),
    ("path=/data/train-*", {"path": "/data/train-*"}),
])
def test_experiment_params_are_python_literals_else_strings(text, expected):
  assert engine.config.experiment_param_values(text) == expected
  assert engine.config.experiment_param_values(engine.config.format_params(expected)) == expected


@pytest.mark.parametrize("text,message", [
    ("heads", r"each item is key=value; received 'heads'"),
    ("a=1,a=2", r"'a' is given twice"),
    ("1x=3", r"each item is key=value"),
])
def test_bad_experiment_params_are_named(text, message):
  with pytest.raises(ValueError, match=message):
    engine.Config(model_dir="x", experiment_params=text)


def test_a_run_refuses_a_model_change_naming_each_setting_and_records_the_rest(tmp_path):
  model_dir = str(tmp_path)
  first = engine.Config(model_dir=model_dir, experiment_params="heads='a:softmax:2',width=3")
  run_config.record(first)
  assert engine.Config(**run_config.read(model_dir)) == first
  changed = dataclasses.replace(first, experiment="images",
                                experiment_params="heads='a:softmax:2',width=4,depth=1")
  with pytest.raises(ValueError) as error:
    run_config.record(changed)
  message = str(error.value)
  assert "experiment: 'synthetic' -> 'images'" in message
  assert "experiment_params width: 3 -> 4" in message
  assert "experiment_params depth: '(unset)' -> 1" in message
  assert "heads" not in message.split("differ")[1]
  assert engine.Config(**run_config.read(model_dir)) == first  # Left as it was.
  longer = dataclasses.replace(first, train_steps=9000, learning_rate=0.5)
  run_config.record(longer)
  assert engine.Config(**run_config.read(model_dir)) == longer


def test_kept_settings_fill_the_flags_not_given(tmp_path):
  model_dir = str(tmp_path)
  run_config.record(engine.Config(model_dir=model_dir, batch_size=7, learning_rate=0.25,
                                  experiment_params="hidden_units=(8,),num_train_examples=64"))
  holder = _flags()
  holder(["x", f"--model_dir={model_dir}", "--learning_rate=0.5",
          "--experiment_params=hidden_units=(16,)"])
  run_config.apply_to_flags(holder, model_dir)
  config = config_flags.config_from_flags(holder)
  assert (config.batch_size, config.learning_rate) == (7, 0.5)
  assert config.params == {"hidden_units": (16,), "num_train_examples": 64}  # Merged.


def test_hparams_hold_every_setting_and_each_experiment_parameter():
  config = engine.Config(model_dir="x", experiment_params="width=3,name='b'")
  values = run_config.hparams(config)
  assert values["experiment_params/width"] == 3 and values["experiment_params/name"] == "b"
  assert values["learning_rate"] == config.learning_rate and "model_dir" not in values


@pytest.mark.parametrize("field,value,message", [
    ("learning_rate", float("nan"), r"learning_rate must be a finite number >= 0.0"),
    ("learning_rate", -1.0, r"learning_rate must be a finite number >= 0.0; received -1.0"),
    ("weight_decay", float("inf"), r"weight_decay must be a finite number"),
    ("lr_schedule", "step", r"lr_schedule must be one of"),
    ("optimizer", "adagrad", r"optimizer must be one of \('adamw'"),
    ("momentum", 1.5, r"momentum must be a finite number >= 0.0 and <= 1.0"),
    ("lr_boundaries", (20, 10), r"lr_boundaries must increase"),
    ("experiment", "", r"experiment must be a registered name"),
])
def test_bad_settings_name_the_field(field, value, message):
  with pytest.raises(ValueError, match=message):
    engine.Config(model_dir="x", **{field: value})
