"""Reading what a run wrote for TensorBoard, for the end-to-end tests."""

import os

import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator


def loaded(model_dir, split="eval"):
  """An EventAccumulator of `model_dir/<split>` holding every tensor event, read."""
  accumulator = event_accumulator.EventAccumulator(os.path.join(model_dir, split),
                                                   size_guidance={"tensors": 0})
  accumulator.Reload()
  return accumulator


def final_scalars(model_dir, split="eval"):
  """The last value of each scalar in `model_dir/<split>`."""
  accumulator = loaded(model_dir, split)
  return {tag: float(tf.make_ndarray(accumulator.Tensors(tag)[-1].tensor_proto))
          for tag in accumulator.Tags()["tensors"]
          if accumulator.SummaryMetadata(tag).plugin_data.plugin_name == "scalars"}
