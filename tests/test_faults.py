"""The fault table: each row a fault or bad input, and the outcome it must give.

The rows (`tests/faults_inputs.py`, `tests/faults_checkpoints.py`) cover
every case of issue 15 (checkpoints, writers, signals, leftovers, silent
numbers) and every row of BUILD.md's bad-input tables, each at its cheapest
(tiny models, no XLA); two rows run the scripts (two train.py processes on
one model_dir, a truncated checkpoint then evaluate.py).
"""

import re

import keras
import pytest

import engine
import heads
from tests import faults_checkpoints
from tests import faults_inputs  # pylint: disable=unused-import
from tests.conftest import small_trunk
from tests.fault_table import ROWS
from tests.fault_table import Context
from tests.fault_table import outcome

two_writers = faults_checkpoints.two_writers  # A module fixture of the script rows.


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A demo-head run with checkpoints at steps 5 and 10 (copied by each row that uses it)."""
  model_dir = str(tmp_path_factory.mktemp("trained"))
  trainer = engine.Trainer(
      trunk=small_trunk(), heads=heads.parse_heads(engine.data.DEMO_HEADS),
      optimizer=keras.optimizers.Adam(1e-3),
      config=engine.Config(model_dir=model_dir, steps_per_loop=5, checkpoint_every=5, seed=0,
                           jit_compile=False, head_diagnostics=False))
  trainer.train(engine.data.synthetic("train", 16, num_examples=256), steps=10)
  return model_dir


@pytest.mark.parametrize("name", sorted(ROWS))
def test_fault(name, make_trainer, tmp_path, trained, request):
  function, expected = ROWS[name]
  text = outcome(function, Context(make_trainer, tmp_path, trained, request))
  assert re.search(expected, text, re.S), text
