"""One config loader for every stage and tool: YAML files with `base:` layering, command-line overrides, typed
sections, and cross-field rules, all checked before anything heavy is imported.

- `schema`: fields with help text (`option`) and the checking of values against their annotations;
- `files`: the `base:` chain, overrides, `${oc.env:}`, redaction of secrets, path lookup;
- `sections`: the sections every stage shares (`ModelArgs`, `DataSourceArgs`, `PeftArgs`, `RunConfig`);
- `training_fields`: the fields of a TRL/transformers config class, read from its source;
- `stage`: `StageSpec`, the training_args a stage owns (`Owned`), validation and the command line.
"""

from self_model.config.files import (
    COMMAND_LINE,
    REPO_ROOT,
    SECRET_KEY_PATTERN,
    Merged,
    is_secret_key,
    locate,
    merge_layers,
    path_exists_or_hub_id,
    redact,
)
from self_model.config.schema import check_dataclass, closest, option
from self_model.config.sections import PEFT_METHODS, TRACE_BACKENDS, DataSourceArgs, ModelArgs, PeftArgs, RunConfig
from self_model.config.stage import Owned, StageSpec, from_key, load_config, load_config_file, replace_model, value_at
from self_model.config.training_fields import import_class, training_arg_types

__all__ = [
    "COMMAND_LINE", "PEFT_METHODS", "REPO_ROOT", "SECRET_KEY_PATTERN", "TRACE_BACKENDS", "DataSourceArgs", "Merged",
    "ModelArgs", "Owned", "PeftArgs", "RunConfig", "StageSpec", "check_dataclass", "closest", "from_key",
    "import_class", "is_secret_key", "load_config", "load_config_file", "locate", "merge_layers", "option",
    "path_exists_or_hub_id", "redact", "replace_model", "training_arg_types", "value_at",
]
