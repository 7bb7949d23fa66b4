"""absl flags generated from `Config`'s fields, and the flagfile a run keeps.

One flag per field, of the same name, default, help and choices, so a setting
is defined once (in `engine/config.py`); `Config`'s validation then names
the field, which is the flag. Tuples are comma lists; unset optional
settings are flags without a value.
"""

import dataclasses
import re
import typing

from absl import flags

from engine.config import Config

FIELDS = tuple(dataclasses.fields(Config))
NAMES = tuple(field.name for field in FIELDS)


def _base_type(field):
  """int, float, bool, str or tuple, without Optional[...]."""
  kind = field.type
  if typing.get_origin(kind) is typing.Union:
    kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
  return kind


def define_flags(flag_values=flags.FLAGS):
  """Defines one flag per Config field in `flag_values`; returns their names.

  `model_dir` has no default and is required. A script calls this once (in
  `scripts/common.py`) and marks the flags as key flags, so `--help` lists them.
  """
  for field in FIELDS:
    default = None if field.default is dataclasses.MISSING else field.default
    kind = _base_type(field)
    choices = field.metadata.get("choices")
    arguments = dict(name=field.name, default=default, help=field.metadata["help"],
                     flag_values=flag_values)
    if choices:
      flags.DEFINE_enum(enum_values=list(choices), **arguments)
    elif kind is bool:
      flags.DEFINE_boolean(**arguments)
    elif kind is int:
      flags.DEFINE_integer(**arguments)
    elif kind is float:
      flags.DEFINE_float(**arguments)
    elif kind is tuple:
      arguments["default"] = None if default is None else list(default)
      flags.DEFINE_list(**arguments)
    else:
      flags.DEFINE_string(**arguments)
  flags.mark_flag_as_required("model_dir", flag_values=flag_values)
  return NAMES


def config_from_flags(flag_values=flags.FLAGS) -> Config:
  """The Config these flags hold."""
  return Config(**{name: flag_values[name].value for name in NAMES})


def flagfile_text(config: Config) -> str:
  """`config` as flagfile lines (`--name=value`), one per field, `--flagfile` readable.

  Serialised by absl itself: each value reads back as it was.
  """
  holder = flags.FlagValues()
  define_flags(holder)
  lines = []
  for field in FIELDS:
    value = getattr(config, field.name)
    flag = holder[field.name]
    flag.value = list(value) if isinstance(value, tuple) else value
    lines.append(flag.serialize() if value is not None else f"# --{field.name} unset")
  return "\n".join(lines) + "\n"


def parse_flagfile(text: str) -> dict:
  """The settings in flagfile text written by `flagfile_text`: {field: value}."""
  holder = flags.FlagValues()
  define_flags(holder)
  lines = [line.strip() for line in text.splitlines()]
  holder(["config", *[line for line in lines if line and not line.startswith("#")]])
  values = {name: holder[name].value for name in NAMES if holder[name].present}
  values.update({match: None for match in re.findall(r"^# --(\w+) unset$", text, re.M)
                 if match in NAMES})
  return values
