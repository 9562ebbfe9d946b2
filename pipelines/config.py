"""Typed configuration for every medr1 program.

The dataclasses in ``config_schema.py`` are the schema; YAML files in ``configs/`` fill them in
and ``key=value`` arguments override them. OmegaConf's struct mode refuses
unknown keys and values of the wrong type; ``load_config`` turns those
refusals into messages that name the key and what would have been valid.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    OmegaConfBaseException,
    ValidationError,
)

from pipelines.config_checks import validate
from pipelines.config_schema import (  # noqa: F401  (re-exported: the schema is imported from here)
    CaptionPretrainConfig,
    ClusterConfig,
    DataConfig,
    EvalConfig,
    GRPOConfig,
    LearnerConfig,
    LoggingConfig,
    MedR1Config,
    ModelConfig,
    Resources,
    RewardConfig,
    RolloutConfig,
    SFTConfig,
    SyntheticDataConfig,
    TinyModelConfig,
    TrainerConfig,
    WeightSyncConfig,
)
from pipelines.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs"




def _valid_keys(node: Any) -> list[str]:
    return sorted(node.keys()) if isinstance(node, DictConfig) else []


def _explain(err: OmegaConfBaseException, schema: DictConfig, source: str) -> str:
    key = getattr(err, "full_key", None) or getattr(err, "key", None) or "?"
    if isinstance(err, (ConfigKeyError, ConfigAttributeError)) or "not in" in str(err):
        parent_path, _, leaf = str(key).rpartition(".")
        parent = OmegaConf.select(schema, parent_path) if parent_path else schema
        choices = _valid_keys(parent)
        close = difflib.get_close_matches(leaf, choices, n=1)
        hint = f" Did you mean '{(parent_path + '.') if parent_path else ''}{close[0]}'?" if close else ""
        where = f"'{parent_path}'" if parent_path else "the top level"
        return f"{source}: unknown config key '{key}'.{hint} Valid keys in {where}: {', '.join(choices)}"
    if isinstance(err, ValidationError):
        return f"{source}: bad value for '{key}': {str(err).splitlines()[0]}"
    return f"{source}: {err}"


# Spellings users reach for that cannot be dataclass fields (``async`` is a Python keyword).
_ALIASES = {"rollout.async": "rollout.async_mode"}


# Mappings whose default has entries: a config that names the mapping gives all of it. Merged key by key,
# `functions: {format_nothink: 1, accuracy_strict: 1}` would silently keep the default's think-format reward.
REPLACED_MAPPINGS = ("reward.functions",)


def _apply_aliases(file_cfg) -> None:
    for alias, key in _ALIASES.items():
        section, _, name = alias.rpartition(".")
        node = OmegaConf.select(file_cfg, section) if section else file_cfg
        if node is not None and name in node:
            node[key.rpartition(".")[2]] = node.pop(name)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> MedR1Config:
    """Schema <- YAML file <- ``key=value`` overrides, validated at each step.

    Returns a real ``MedR1Config``: dataclasses all the way down, enums for the closed choices.
    """
    schema = OmegaConf.structured(MedR1Config)
    cfg = schema
    if path is not None:
        path = resolve_config_path(path)
        try:
            _check_yaml_size(path)
            file_cfg = OmegaConf.load(path)
        except ConfigError:
            raise
        except Exception as e:  # yaml errors carry line numbers; keep them
            raise ConfigError(f"{path}: cannot parse YAML: {e}") from None
        if not isinstance(file_cfg, DictConfig):
            raise ConfigError(f"{path}: the top level must be a mapping of sections (model:, data:, rollout:, ...), "
                              f"not a {'list' if isinstance(file_cfg, ListConfig) else type(file_cfg).__name__}")
        _apply_aliases(file_cfg)
        try:
            cfg = OmegaConf.merge(cfg, file_cfg)
            for key in REPLACED_MAPPINGS:  # the file's mapping is the whole mapping, not keys added to the default's
                if OmegaConf.select(file_cfg, key) is not None:
                    OmegaConf.update(cfg, key, OmegaConf.select(file_cfg, key), merge=False)
        except OmegaConfBaseException as e:
            raise ConfigError(_explain(e, schema, str(path))) from None
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. rollout.num_workers=4)")
        key, _, value = item.partition("=")
        key = _ALIASES.get(key.strip(), key.strip())
        try:
            cfg = _merge_override(cfg, key, value)
        except OmegaConfBaseException as e:
            raise ConfigError(_explain(e, schema, f"override '{key}={value}'")) from None
        except yaml.YAMLError as e:  # the value is parsed as YAML: '[1,2', '*a', a control character, a tag
            raise ConfigError(f"override '{key}={value}': the value is not valid YAML "
                              f"({str(e).splitlines()[0]})") from None
        except TypeError as e:  # OmegaConf: a mapping given for a list and the like
            raise ConfigError(f"override '{key}={value}': {e}") from None
        except IndexError:  # OmegaConf's dotlist parser on a key such as '[' (no path left once split)
            raise ConfigError(f"override '{key}={value}': '{key}' is not a config key (e.g. rollout.num_workers)") \
                from None
    return config_from(cfg)


MAX_CONFIG_BYTES = 1 << 20


def _check_yaml_size(path: Path) -> None:
    """A config is a page of settings: a huge file is refused before it is parsed. (Anchor and
    alias bombs are refused by OmegaConf's own expansion limit, tested in tests/test_hostile_input.py.)"""
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {path.stat().st_size:,} bytes; a config is under {MAX_CONFIG_BYTES:,}")


def config_from(cfg: Any) -> MedR1Config:
    """A checked ``MedR1Config`` object from a merged, typed OmegaConf node."""
    try:
        obj = OmegaConf.to_object(cfg)  # resolves interpolations (${oc.env:...}): their values are checked here
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or "?"
        raise ConfigError(f"{key}: {str(e).splitlines()[0]}") from None
    validate(obj)
    return obj


def _merge_override(cfg, key: str, value: str):
    """Merge one ``key=value``. An empty value (``key=``) means null where the field may be
    null, and the empty string where it is a plain string (e.g. ``sft.warmstart_dir=``: off)."""
    try:
        if key in REPLACED_MAPPINGS:  # `reward.functions={accuracy: 1}` is the whole set; `reward.functions.x=0` edits one
            cfg = cfg.copy()
            OmegaConf.update(cfg, key, OmegaConf.select(OmegaConf.from_dotlist([f"{key}={value}"]), key), merge=False)
            return cfg
        return OmegaConf.merge(cfg, OmegaConf.from_dotlist([f"{key}={value}"]))
    except ValidationError:
        if value.strip():
            raise
        return OmegaConf.merge(cfg, OmegaConf.from_dotlist([f"{key}=''"]))


def resolve_config_path(path: str | Path) -> Path:
    """A path as given, else relative to the repository's ``configs/`` (so ``smoke.yaml`` works anywhere)."""
    p = Path(path)
    for candidate in (p, CONFIG_DIR / p, CONFIG_DIR / f"{p}.yaml"):
        if candidate.is_file():
            return candidate
    known = sorted(x.name for x in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"config file '{path}' not found; the shipped configs are: {', '.join(known)}")


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Any) -> dict:
    """Plain dict (enums as strings): what travels to another process or a JSON file."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True)


def from_dict(d: dict) -> MedR1Config:
    """The inverse of ``to_dict``, checked like a loaded config."""
    try:
        return config_from(OmegaConf.merge(OmegaConf.structured(MedR1Config), d))
    except OmegaConfBaseException as e:
        raise ConfigError(str(e)) from None
