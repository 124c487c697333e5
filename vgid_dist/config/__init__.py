"""The run configuration: pydantic models (``run``), every method's parameters (``method_params``), YAML recipes
and ``key=value`` overrides (``recipes``), and the DeepSpeed JSON of a run (``deepspeed``)."""

from vgid_dist.config.deepspeed import DS_CONFIGS_DIR, ds_config_path, load_ds_config, resolve_ds_config
from vgid_dist.config.method_params import METHOD_PARAMS, MethodParams, method_params_model
from vgid_dist.config.recipes import (
    OVERRIDE_SHORTCUTS,
    RECIPES_DIR,
    apply_overrides,
    build_run_config,
    deep_merge,
    flatten,
    load_recipe_dict,
    load_run_config,
    packaged_file,
    packaged_recipes,
    parse_override,
    recipe_path,
    resolved_config,
    updated_config,
)
from vgid_dist.config.run import (
    DataConfig,
    EvalConfig,
    EvalOptions,
    EvalSettings,
    LoraConfig,
    MethodConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    format_validation_error,
)
