"""The preset grammar of `--config=configs/<file>.py:<items>`, and the config files it names.

One parser for every config file, fine-tuning, the sweep and the run labels (`parse_arg`), and one
loader for the command line, tests and benchmarks (`load`). `schema` re-exports all of it; this
module imports no JAX.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import os
from pathlib import Path

from ml_collections.config_dict import ConfigDict

from climb_jax.errors import ConfigError


def suggest(word: str, valid) -> str:
    """' Did you mean ...?' for the closest of `valid`, or ''."""
    close = difflib.get_close_matches(word, list(valid), n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


# --------------------------------------------------------------------------------------------
# The preset grammar: `configs/<file>.py:<item>,<item>,...`, the one parser for every config file,
# fine-tuning and the sweep.
#
#   item  := word | key=value | key=[value,value,...]
#
# Items are separated by commas outside brackets. A word is a preset of the config file (`smoke`
# always applies last, whatever its position). A key is a dotted config field; brackets give it a
# list, so the commas inside them belong to the value: `finetune.text_fields=[premise,hypothesis]`.
# A list sets a tuple field to a tuple, and a string field to its items joined by commas (the
# comma-separated fields: text fields, POS tags, source orders). The brackets are the only way
# to put a comma into a value: a bare word after `key=value` is always a preset word, never the
# continuation of the value, so a misspelt preset is never silently swallowed by the value before it.
# (zsh treats `[...]` as a pattern: quote such an argument there, `'--config=...'`.)

@dataclasses.dataclass(frozen=True)
class Setting:
    """A `key=value` item; `value` is a tuple for a bracketed list."""

    key: str
    value: str | tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class PresetArg:
    """A parsed preset argument: its items in order (a `str` is a preset word)."""

    items: tuple[str | Setting, ...] = ()

    @property
    def words(self) -> tuple[str, ...]:
        return tuple(i for i in self.items if isinstance(i, str))

    @property
    def settings(self) -> tuple[Setting, ...]:
        return tuple(i for i in self.items if isinstance(i, Setting))

    def list_candidate(self, word: str, valid) -> tuple[Setting, tuple[str, ...]] | None:
        """When `word` (not a preset) follows a `key=value` item, possibly after other such words:
        that item and the words that look like the rest of its list (the usual mistake: a list
        written without brackets)."""
        for i, item in enumerate(self.items):
            if item != word:
                continue
            j = i
            while j > 0 and isinstance(self.items[j - 1], str) and self.items[j - 1] not in valid:
                j -= 1
            if j == 0 or not isinstance(self.items[j - 1], Setting) or isinstance(self.items[j - 1].value, tuple):
                return None
            k = i
            while k + 1 < len(self.items) and isinstance(self.items[k + 1], str) and self.items[k + 1] not in valid:
                k += 1
            return self.items[j - 1], tuple(self.items[j:k + 1])
        return None


def _split_items(text: str) -> list[str]:
    items, depth, current = [], 0, []
    for ch in text:
        if ch == "[":
            depth += 1
            if depth > 1:
                raise ConfigError(f"preset argument '{text}': lists do not nest; write key=[a,b].")
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ConfigError(f"preset argument '{text}' has a ']' without its '['; a list is key=[a,b].")
        if ch == "," and depth == 0:
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth:
        raise ConfigError(f"preset argument '{text}' has a '[' without its ']'; a list is key=[a,b].")
    items.append("".join(current))
    return [i.strip() for i in items if i.strip()]


def parse_arg(arg: str | None) -> PresetArg:
    """`'rte,seeds3,finetune.lr=1e-4,finetune.text_fields=[premise,hypothesis]'` -> a `PresetArg`."""
    items: list[str | Setting] = []
    for item in _split_items(arg or ""):
        if "=" not in item:
            if "[" in item or "]" in item:
                raise ConfigError(f"preset word '{item}': brackets belong to a value, key=[a,b].")
            items.append(item)
            continue
        key, raw = (x.strip() for x in item.split("=", 1))
        if not key:
            raise ConfigError(f"preset item '{item}' has no key before '='; write key=value.")
        if raw.startswith("[") and raw.endswith("]"):
            items.append(Setting(key, tuple(v.strip() for v in raw[1:-1].split(",") if v.strip())))
        elif "[" in raw or "]" in raw:
            raise ConfigError(f"preset item '{item}': a list value is the whole value in brackets, {key}=[a,b].")
        else:
            items.append(Setting(key, raw))
    return PresetArg(tuple(items))


def format_arg(parsed: PresetArg) -> str:
    """The inverse of `parse_arg` (a canonical spelling)."""
    out = []
    for item in parsed.items:
        if isinstance(item, Setting):
            value = f"[{','.join(item.value)}]" if isinstance(item.value, tuple) else item.value
            out.append(f"{item.key}={value}")
        else:
            out.append(item)
    return ",".join(out)


def _parse_scalar(raw: str, current, key: str):
    """Parses `raw` into the type of the existing field `current`."""
    kind = type(current)
    try:
        if isinstance(current, bool):
            low = raw.lower()
            if low not in ("true", "false", "1", "0"):
                raise ValueError(raw)
            return low in ("true", "1")
        if isinstance(current, int):
            return int(raw)
        if isinstance(current, float):
            return float(raw)
    except ValueError:
        raise ConfigError(f"config key '{key}' takes a {kind.__name__}, not '{raw}'.") from None
    return raw


def _infer(raw: str):
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def _parse_value(value: str | tuple[str, ...], current, key: str):
    if isinstance(current, tuple):
        items = value if isinstance(value, tuple) else (value,)
        if current:  # the type of the existing elements
            return tuple(_parse_scalar(v, current[0], key) for v in items)
        return tuple(_infer(v) for v in items)  # an empty tuple says nothing: numbers as numbers
    if isinstance(value, tuple):
        if isinstance(current, str):
            return ",".join(value)
        raise ConfigError(f"config key '{key}' takes a {type(current).__name__}, not a list [{','.join(value)}].")
    return _parse_scalar(value, current, key)


def flatten(tree, prefix: str = "") -> dict:
    """{dotted key: value} of the leaves of a config (a ConfigDict or the dict of a config.json)."""
    out = {}
    for name, value in tree.items():
        if isinstance(value, (ConfigDict, dict)):
            out.update(flatten(value, f"{prefix}{name}."))
        else:
            out[prefix + name] = value
    return out


def _dotted_keys(c: ConfigDict, prefix: str = "") -> list[str]:
    """Every field of `c` by its dotted key, groups and their fields alike."""
    keys = []
    for name, value in c.items():
        keys.append(prefix + name)
        if isinstance(value, ConfigDict):
            keys += _dotted_keys(value, f"{prefix}{name}.")
    return keys


def missing_field(c: ConfigDict, key: str) -> str | None:
    """Why the dotted `key` names no field of `c`, with help to find the right one; None when it does.

    The first part that does not exist is named, with the nearest field of its section (by spelling,
    `trainng` -> `trainer`; else the field the key's tail names elsewhere, `total_steps` ->
    `trainer.total_steps`) and the section's fields, so a wrong key is fixed in one try."""
    node = c
    parts = key.split(".")
    for i, part in enumerate(parts):
        where = ".".join(parts[:i])
        if not isinstance(node, ConfigDict):
            return f"{where} is a {type(node).__name__} value, not a section with a field '{part}'."
        if part not in node:
            fields = sorted(node.keys())
            hint = suggest(part, fields)
            if not hint:  # the key names a field of another section: `total_steps` for trainer.total_steps
                tail = ".".join(parts[i:])
                elsewhere = sorted((k for k in _dotted_keys(c) if k.endswith("." + tail)),
                                   key=lambda k: (k.count("."), k))
                hint = f" Did you mean {' or '.join(repr(k) for k in elsewhere[:3])}?" if elsewhere else ""
            section = f"the section {where}" if where else "the config (top level)"
            return f"there is no field '{part}'.{hint} Fields of {section}: {', '.join(fields)}."
        node = node[part]
    return None


def set_path(c: ConfigDict, key: str, raw: str | tuple[str, ...]) -> None:
    """Sets `c.<key>` (dotted) from a string (or a list of strings), with the existing field's type."""
    missing = missing_field(c, key)
    if missing:
        raise ConfigError(f"unknown config key '{key}': {missing}")
    node = c
    parts = key.split(".")
    for part in parts[:-1]:
        node = node[part]
    last = parts[-1]
    current = node[last]
    if isinstance(current, ConfigDict):
        raise ConfigError(f"config key '{key}' is a group, not a value; set one of its fields.")
    if current is None:  # a placeholder: keep its declared type
        typ = node.get_ref(last).get_type()
        if isinstance(raw, tuple):
            if typ is not str:
                raise ConfigError(f"config key '{key}' takes a {typ.__name__}, not a list.")
            raw = ",".join(raw)
        try:
            value = typ(raw) if typ is not str else raw
        except ValueError:
            raise ConfigError(f"config key '{key}' takes a {typ.__name__}, not '{raw}'.") from None
    else:
        value = _parse_value(raw, current, key)
    node[last] = value


def _example_item(c: ConfigDict) -> str:
    for section, group in sorted(c.items(), key=lambda kv: kv[0] != "trainer"):
        if isinstance(group, ConfigDict) and isinstance(group.get("lr"), float):
            return f"{section}.lr={group.lr:g}"
    return "trainer.lr=0.001"


def _takes_list(c: ConfigDict, key: str) -> bool:
    """Whether the field `key` of `c` can hold a list (a tuple or a comma-separated string field)."""
    node = c
    try:
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        value = node[last]
        return isinstance(value, (str, tuple)) or (value is None and node.get_ref(last).get_type() is str)
    except (KeyError, AttributeError, TypeError):
        return False


def unknown_word(word: str, valid, parsed: PresetArg, where: str = "", c: ConfigDict | None = None) -> ConfigError:
    """The error for a word that is no preset of the config file: the valid words, and the bracketed
    list form when the word follows a key=value item whose field (in `c`) takes a list and the word
    is not a near miss of a preset word (the usual cause: a list written without brackets)."""
    example = _example_item(c) if c is not None else "trainer.lr=0.001"
    takes_list = (lambda key: _takes_list(c, key)) if c is not None else (lambda key: True)
    valid = sorted(valid)
    where = f" for {where}" if where else ""
    message = (f"unknown preset word '{word}'{where}.{suggest(word, valid)} Valid words: {', '.join(valid)};"
               f" or key=value items such as {example}.")
    candidate = parsed.list_candidate(word, valid)
    if candidate is not None and takes_list(candidate[0].key) and not suggest(word, valid):
        setting, rest = candidate
        message += (f" If '{word}' belongs to the value of {setting.key}, write the list in brackets: "
                    f"{setting.key}=[{','.join((setting.value, *rest))}].")
    return ConfigError(message)


# --------------------------------------------------------------------------------------------
# Config files: finding and loading them (the command line, tests and benchmarks share this).

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = PROJECT_ROOT / "configs"


def config_files() -> list[Path]:
    """The config files a user can name: `configs/*.py` of the project."""
    return sorted(p for p in CONFIG_DIR.glob("*.py") if not p.name.startswith("_"))


def split_spec(spec: str) -> tuple[str, str | None]:
    """`'configs/x.py:smoke,large'` -> ('configs/x.py', 'smoke,large'); ml_collections' rule (first ':')."""
    path, sep, arg = spec.partition(":")
    return path, (arg if sep else None)


def resolve_config_path(path: str | os.PathLike) -> Path:
    """The config file `path` names: as given (relative to the working directory), else relative to
    the project root, so `configs/vanilla.py` works from any directory. A missing file is a
    `ConfigError` listing the config files."""
    p = Path(path)
    if p.is_file():
        return p
    if not p.is_absolute() and (PROJECT_ROOT / p).is_file():
        return PROJECT_ROOT / p
    names = [f"configs/{f.name}" for f in config_files()]
    hint = suggest(str(path), names)
    raise ConfigError(f"config file '{path}' does not exist.{hint} Config files: {', '.join(names)}.")


def load_module(path: str | os.PathLike):
    """Imports a config file by path (as ml_collections' `--config` flag does)."""
    p = resolve_config_path(path)
    spec = importlib.util.spec_from_file_location(f"climb_config_{p.stem}", p)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load(spec: str | os.PathLike, arg: str | None = None) -> ConfigDict:
    """`load("configs/data_cl.py:ngram,log,smoke")` (or `load("configs/data_cl.py", "ngram,log")`):
    the config the command line's `--config=` gives, without command-line overrides."""
    path, words = split_spec(str(spec))
    if arg is not None:
        if words is not None:
            raise ConfigError(f"load('{spec}', '{arg}'): give the preset words once.")
        words = arg
    return load_module(path).get_config(words)


def default_label(config_arg: str) -> str:
    """'configs/vocab_cl.py:pos_tags,log,smoke' -> 'vocab_cl:pos_tags-log' (smoke and key=value dropped)."""
    path, arg = split_spec(config_arg)
    stem = os.path.splitext(os.path.basename(path))[0]
    words = [w for w in parse_arg(arg).words if w != "smoke"]
    return f"{stem}:{'-'.join(words)}" if words else stem
