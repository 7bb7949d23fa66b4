"""Stable names for a model's variables and their optimizer slots, from their place in the model.

Keras 3 hides model variables from `tf.train.Checkpoint` (they are reached
only as `optimizer/_trainable_variables/N`, by position), and its layer
names depend on how many layers the process made before (`dense_7`). Here
every variable is named by where it sits: `trunk/<layer>/.../<variable>` or
`heads/<head name>/<layer>/.../<variable>`, where a layer's key is its name
with Keras's uniquifying suffix dropped (then numbered among its siblings,
as a fresh process would: `dense`, `dense_1`) and a variable's key is its
own name (`kernel`). Optimizer slots are named `slots/<the same path>/<slot>`
(`slots/trunk/dense/kernel/momentums`), so heads in another order, a new
head or another optimizer are all recognised by name.
"""

import re

from keras.src.utils import naming as keras_naming

# What tf.train.Checkpoint puts after an object's path, for a variable.
_VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


def _layer_key(layer) -> str:
  """The layer's name without the `_N` Keras adds to auto-generated names."""
  auto = keras_naming.to_snake_case(type(layer).__name__)
  return auto if re.fullmatch(rf"{re.escape(auto)}(_\d+)?", layer.name) else layer.name


def _unique(key: str, taken: dict) -> str:
  if key not in taken:
    return key
  number = 1
  while f"{key}_{number}" in taken:
    number += 1
  return f"{key}_{number}"


def _layer_tree(layer, seen: set) -> dict:
  """{key: variable or subtree} for `layer`, in Keras's own order (`Layer.variables`).

  `seen` holds the ids of variables already named elsewhere (a layer shared
  by two heads is named once, under the first head by name).
  """
  tree = {}
  own = list(layer._trainable_variables) + list(layer._non_trainable_variables)  # pylint: disable=protected-access
  own += [generator.state for generator in layer._seed_generators]  # pylint: disable=protected-access
  for variable in own:
    if id(variable) not in seen:
      seen.add(id(variable))
      tree[_unique(variable.name, tree)] = variable
  for sublayer in layer._layers:  # pylint: disable=protected-access
    subtree = _layer_tree(sublayer, seen)
    if subtree:
      tree[_unique(_layer_key(sublayer), tree)] = subtree
  return tree


def model_tree(model) -> dict:
  """{"trunk": {...}, "heads": {head name: {...}}}: every model variable, by its place."""
  seen = set()
  trunk = _layer_tree(model.trunk, seen)
  heads = {head.name: _layer_tree(head, seen)
           for head in sorted(model.head_list, key=lambda head: head.name)}
  tree = {"trunk": trunk, "heads": {name: subtree for name, subtree in heads.items() if subtree}}
  missed = [variable.path for variable in model.variables if id(variable) not in seen]
  if missed:  # Layer.variables and this walk read the same attributes; a safeguard.
    raise ValueError(f"These model variables have no place in the model's layer tree, so "
                     f"they cannot be checkpointed by name: {missed}.")
  return tree


def flatten(tree: dict, prefix: str = "") -> dict:
  """{"trunk/dense/kernel": variable, ...} of a tree."""
  flat = {}
  for key, value in tree.items():
    path = f"{prefix}/{key}" if prefix else key
    flat.update(flatten(value, path) if isinstance(value, dict) else {path: value})
  return flat


def nest(flat: dict) -> dict:
  """The tree of a flat {path: variable} (the inverse of `flatten`)."""
  tree = {}
  for path, value in flat.items():
    *parents, leaf = path.split("/")
    node = tree
    for parent in parents:
      node = node.setdefault(parent, {})
    node[leaf] = value
  return tree


def optimizer_tree(optimizer, model_paths: dict) -> dict:
  """The optimizer's variables: {"iterations", "slots": {...}, "state": {...}}.

  `model_paths` is {id(model variable): its path}. A slot is found as Keras
  optimizers keep them: a list attribute with one entry per trainable
  variable (`_momentums`, `_velocities`, Adafactor's `_r`, `_c`, `_v`); its
  attribute name (without the underscore) names the slot. Any other
  variable (a loss scale's) goes under "state" by its own name.
  """
  inner = getattr(optimizer, "inner_optimizer", optimizer)
  owned = {id(variable): variable for variable in optimizer.variables}
  references = list(inner._trainable_variables)  # pylint: disable=protected-access
  slots, named = {}, set()
  for attribute, value in sorted(vars(inner).items()):
    if (attribute == "_trainable_variables" or not isinstance(value, (list, tuple))
        or len(value) != len(references)):
      continue
    for reference, variable in zip(references, value):
      if variable is not None and id(variable) in owned and id(variable) not in named:
        named.add(id(variable))
        slots[f"{model_paths[id(reference)]}/{attribute.lstrip('_')}"] = variable
  tree = {"iterations": optimizer.iterations, "slots": nest(slots), "state": {}}
  named.add(id(optimizer.iterations))
  # A constant learning rate is a variable; the run's configuration sets it, so a resumed
  # run with another --learning_rate uses the new one: not saved.
  named.add(id(getattr(inner, "_learning_rate", None)))
  for variable in optimizer.variables:
    if id(variable) not in named:
      named.add(id(variable))
      tree["state"][_unique(variable.name, tree["state"])] = variable
  return tree


def checkpoint_key(path: str) -> str:
  """The key `tf.train.list_variables` shows for the variable at `path` of the checkpoint."""
  # tf.train.Checkpoint escapes "." in object names as ".." (and "/" as ".S").
  return "/".join(part.replace(".", "..") for part in path.split("/")) + _VALUE_SUFFIX


def path_of_key(key: str):
  """The path of a checkpoint key that holds a variable's value, else None."""
  if not key.endswith(_VALUE_SUFFIX):
    return None
  return "/".join(part.replace("..", ".") for part in key[:-len(_VALUE_SUFFIX)].split("/"))
