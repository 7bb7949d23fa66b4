"""What a checkpoint gives to this model, matched by name (`engine.checkpoint_names`).

Resuming: every model variable must be in the checkpoint with its shape,
except those of a head the checkpoint does not know (a new head: it keeps
its initialiser, with a warning). A head the checkpoint has and this model
lacks is refused unless `partial` (then it is left out, with a warning). An
optimizer that keeps other slots (another optimizer) restores nothing but
the step count: the model restores and the optimizer starts fresh, with a
warning. Warm start (`init_checkpoint`) takes only the modules it is given
(the trunk, heads by name), whatever else the other run had.
"""

from absl import logging
import tensorflow as tf

from engine import checkpoint_names


def saved_shapes(path: str) -> dict:
  """{variable path: shape} of the checkpoint at `path` (raises TF errors if unreadable)."""
  reader = tf.train.load_checkpoint(path)
  found = {}
  for key, shape in reader.get_variable_to_shape_map().items():
    variable_path = checkpoint_names.path_of_key(key)
    if variable_path is not None:
      found[variable_path] = list(shape)
  return found


def _head_of(path: str):
  """The head a `model/heads/<name>/...` path belongs to, else None."""
  parts = path.split("/")
  return parts[2] if parts[:2] == ["model", "heads"] and len(parts) > 3 else None


def _where(path: str) -> str:
  head = _head_of(path)
  return f"head '{head}'" if head else "the trunk" if path.startswith("model/trunk/") else path


def _mis_shaped(saved: dict, ours: dict) -> list:
  return [f"{path} ({_where(path)}): {saved[path]} in the checkpoint, "
          f"{list(variable.shape)} in this model"
          for path, variable in ours.items() if path in saved and saved[path] != list(variable.shape)]


def for_resume(path: str, saved: dict, variables: dict, partial: bool) -> dict:
  """The subset of `variables` ({path: variable}: "model/...", "optimizer/...",
  counters) to restore from the checkpoint at `path`; raises ValueError if it
  does not fit this model."""
  model = {p: v for p, v in variables.items() if p.startswith("model/")}
  saved_heads = {_head_of(p) for p in saved} - {None}
  our_heads = {_head_of(p) for p in model} - {None}
  problems = _mis_shaped(saved, model)
  new_heads = sorted(our_heads - saved_heads)
  missing = [p for p in model if p not in saved and _head_of(p) not in new_heads]
  problems += [f"{p} ({_where(p)}) is not in the checkpoint" for p in missing]
  removed = sorted(saved_heads - our_heads)
  unknown = sorted(p for p in saved if p.startswith("model/trunk/") and p not in model)
  if removed and not partial:
    problems.append(f"the checkpoint has heads this model lacks: {removed} (restore without "
                    "them with Config(partial_restore=True), --partial_restore)")
  if unknown and not partial:
    problems.append(f"the checkpoint's trunk has variables this trunk lacks: {unknown[:5]}")
  if problems:
    raise ValueError(f"Cannot restore the checkpoint {path} into this model: "
                     + "; ".join(problems) + ". Was it written for another model? Use another "
                     "model_dir (init_checkpoint= warm-starts the parts that fit).")
  if new_heads:
    logging.warning("Heads %s are not in the checkpoint %s: they start from their "
                    "initialisers.", new_heads, path)
  if removed:
    logging.warning("Partial restore of %s: its heads %s are left out.", path, removed)
  chosen = {p: v for p, v in model.items() if p in saved}
  chosen.update({p: v for p, v in variables.items() if not p.startswith(("model/", "optimizer/"))
                 and p in saved and saved[p] == list(v.shape)})
  chosen.update(_optimizer_part(path, saved, variables))
  return chosen


def _slot_names(paths) -> set:
  return {p.rsplit("/", 1)[1] for p in paths if p.startswith("optimizer/slots/")}


def _optimizer_part(path: str, saved: dict, variables: dict) -> dict:
  """The optimizer's variables to restore: all that the checkpoint has, unless it kept other
  slots (another optimizer): then only the step count."""
  ours = {p: v for p, v in variables.items() if p.startswith("optimizer/")}
  saved_slots, our_slots = _slot_names(saved), _slot_names(ours)
  if saved_slots != our_slots:
    logging.warning(
        "The checkpoint %s was written by another optimizer (its slots: %s; this one's: %s): "
        "restoring the model and the step count, and starting the optimizer afresh.", path,
        sorted(saved_slots) or "none", sorted(our_slots) or "none")
    ours = {p: v for p, v in ours.items() if p == "optimizer/iterations"}
  return {p: v for p, v in ours.items() if p in saved and saved[p] == list(v.shape)}


def for_warm_start(source: str, saved: dict, variables: dict, modules) -> dict:
  """The model variables of `modules` ("trunk" or head names) to initialise from `source`."""
  chosen, problems = {}, []
  heads = {_head_of(p) for p in variables} - {None}
  for module in modules:
    if module != "trunk" and module not in heads:
      raise ValueError(f"init_modules names {module!r}, which is neither 'trunk' nor a head "
                       f"of this model ({sorted(heads)}).")
    prefix = "model/trunk/" if module == "trunk" else f"model/heads/{module}/"
    part = {p: v for p, v in variables.items() if p.startswith(prefix)}
    problems += _mis_shaped(saved, part)
    problems += [f"{p} is not in it" for p in part if p not in saved]
    chosen.update({p: v for p, v in part.items() if p in saved})
  if problems:
    raise ValueError(f"Cannot warm-start {list(modules)} from init_checkpoint={source}: "
                     + "; ".join(problems) + ".")
  return chosen


def restore(path: str, variables: dict) -> None:
  """Reads `variables` ({path: variable}, all present in the checkpoint) from `path`."""
  tree = checkpoint_names.nest(variables)
  tf.train.Checkpoint(**tree).restore(path).expect_partial().assert_existing_objects_matched()
