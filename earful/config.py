"""Dataclass configs: one source of truth for defaults, YAML presets, ``key=value`` overrides.

A config is a (possibly nested) dataclass. ``load_config(cls, preset_or_path, overrides)`` starts from
the dataclass defaults, applies a YAML file (a preset name from ``earful/configs/`` or a path), then the
overrides, e.g. ``model.num_layers=4 optim.lr=1e-3``. Values in overrides are parsed as YAML scalars
(safely, numbers in decimal only, no key twice in one mapping: ``_UniqueKeyLoader``), never evaluated.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import yaml

from earful.atomic import atomic_open

PRESET_DIR = Path(__file__).parent / "configs"

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the dataclass."""


def plain_name(value: object, key: str, where: str = "") -> str:
    """``value`` if it can be one path component (a run, label-set, split or checkpoint name): a non-empty
    string without path separators, not ``.`` or ``..``, no control characters. Anything else is refused
    naming ``key`` (and the file ``where`` it came from): names become folders inside the output folder."""
    ok = isinstance(value, str) and value not in ("", ".", "..") and not any(
        c in "/\\" or ord(c) < 32 for c in value)
    if not ok:
        place = f"{where}: " if where else ""
        raise ConfigError(f"{place}{key}={value!r}: not a plain name (a non-empty name without '/', '\\', "
                          "control characters, and not '.' or '..'): it becomes a folder inside the output")
    return value  # type: ignore[return-value]


def at_least(key: str, value: Any, low: int, note: str = "") -> None:
    """Refuse a count below ``low``, naming its key: ``key=value: expected an integer >= low``."""
    if value < low:
        raise ValueError(f"{key}={value}: expected an integer >= {low}{note}")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} fits none of {tp} ({'; '.join(errors)})")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            value = [value]
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        key_type, value_type = args if args else (Any, Any)
        return {_coerce(k, key_type, f"{where} (key {k!r})"): _coerce(v, value_type, f"{where}[{k!r}]")
                for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or (isinstance(value, float) and not math.isfinite(value)) or int(value) != value):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys are an error naming them."""
    types_ = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names, key=repr)  # YAML keys may be numbers or bools (``on:``)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(names)}")
    kwargs = {k: _coerce(v, types_[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain (YAML/JSON-safe) mapping of a dataclass config."""
    out = dataclasses.asdict(cfg)

    def fix(v: Any) -> Any:
        if isinstance(v, tuple):
            return [fix(x) for x in v]
        if isinstance(v, list):
            return [fix(x) for x in v]
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        return v

    return fix(out)


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (the keys of ``key=value`` overrides)."""
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def differences(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[Any]]:
    """``{key: [old, new]}`` for every key whose value differs (missing on one side: None)."""
    return {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


def describe(diff: dict[str, list[Any]], limit: int = 8) -> str:
    """:func:`differences`' ``diff`` for a message: ``seed: 0 -> 1, ...`` (the first ``limit`` keys)."""
    shown = [f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(diff.items())[:limit]]
    return ", ".join(shown) + (f" (and {len(diff) - limit} more)" if len(diff) > limit else "")


class Whole(dict):  # type: ignore[type-arg]
    """A mapping given whole as one override's value (``text_mapping={}``, ``data.test={a: x.jsonl}``)."""


def _sections(cls: type) -> dict[str, type]:
    """The fields of dataclass ``cls`` that are sections (dataclasses themselves, or None): name -> class."""
    out = {}
    for name, tp in _field_types(cls).items():
        inner = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) in (
            typing.Union, types.UnionType) else [tp]
        if len(inner) == 1 and dataclasses.is_dataclass(inner[0]):
            out[name] = inner[0]
    return out


def merge(base: dict[str, Any], update: dict[str, Any], cls: type | None = None) -> dict[str, Any]:
    """``update`` over ``base``, recursively; ``update`` wins. With the config's dataclass ``cls``, a section
    (``optim``) is merged key by key, and so is a mapping *setting* (``text_mapping``, a study's ``data.test``)
    from ``key.entry=value`` overrides, but a mapping given whole (:class:`Whole`: ``text_mapping={}``) replaces
    the setting, as any other value does: the YAML's entries cannot survive an override that names them all."""
    sections = _sections(cls) if cls is not None else {}
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and (k in sections or not isinstance(v, Whole)):
            out[k] = merge(out[k], v, sections.get(k))
        else:
            out[k] = v
    return out


_YAML_COMMENT = re.compile(r"(^|\s)#")


def config_and_overrides(words: list[str], option: str | None) -> tuple[str | None, list[str]]:
    """A training command's config (a YAML path or preset name) and its key=value overrides, as ``earful pretrain``
    and ``earful finetune`` both take them: ``--config NAME``, or a first word without ``=`` (``earful pretrain
    pretrain-demo max_steps=10``); neither: the defaults. (Each took one form only, and refused the other.)"""
    if words and "=" not in words[0]:
        if option is not None:
            raise ConfigError(f"two configs: --config {option} and {words[0]}; give one of them")
        return words[0], words[1:]
    return option, list(words)


def _looks_like_a_path(word: str) -> bool:
    """Whether ``word``, read as a ``key=value`` override, looks like a config path holding ``=``: its key's first
    part holds a ``/`` (no setting's does) or the word names an existing file (``sweep/lr=1e-3/config.yaml``)."""
    if "/" in override_key(word)[0]:
        return True
    try:
        return Path(word).is_file()
    except (OSError, ValueError):  # a name too long, a NUL
        return False


@contextmanager
def overrides_read_as_paths(words: list[str]) -> Iterator[None]:
    """A command's config error, where one of its ``key=value`` words (``config_and_overrides``) looks like a
    config path holding ``=``, says that it was read as an override and how a config path is given: it had said
    only "unknown key(s) ['sweep/lr']". The words are read as they were."""
    try:
        yield
    except ConfigError as e:
        paths = [w for w in words if "=" in w and _looks_like_a_path(w)]
        if not paths:
            raise
        raise ConfigError(f"{e}. {', '.join(map(repr, paths))}: read as a key=value override (every word holding '=' "
                          "is one); give a config path holding '=' with --config PATH") from None


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` → ``{"a": {"b": 1}, "c": "x"}`` (values parsed as YAML scalars). A key given twice:
    the last value stands (a script may append its own), but a key given twice inside one override's mapping
    (``optim={lr: 1e-3, lr: 2e-3}``) is refused, naming the override, as a YAML file's is; an entry set after its
    mapping given whole is merged into it (``optim={lr: 0.1} optim.eps=1e-3``); a mapping given whole after an
    entry of it is refused (it had dropped the entry without a word). A value holding
    `` #`` (or starting with ``#``), where YAML would start a comment, is text, whole
    (``data.train=/a/run #2/x.jsonl``; ``max_steps=5 #five`` is then an error, not 5)."""
    out: dict[str, Any] = {}
    seen: dict[tuple[str, ...], str] = {}  # each override's key, as parts, and the override
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        parts = override_key(item)
        if "" in parts:
            raise ConfigError(f"override {item!r}: {key.strip()!r} is no key (a name between two dots is empty); an "
                              "entry whose name holds a '.' is given with its mapping whole, e.g. "
                              "text_mapping={'.': ''}")
        for earlier, prev in seen.items():  # a mapping given whole after an entry of it would drop that entry
            if len(parts) < len(earlier) and earlier[:len(parts)] == parts:
                raise ConfigError(f"overrides {prev!r} and {item!r} both set {'.'.join(parts)} (an entry, then the "
                                  "mapping given whole, which would drop it): give the entry in the mapping, or after "
                                  "it")
        seen[parts] = item
        try:
            value = _plain_yaml(raw) if raw != "" else ""
        except yaml.constructor.ConstructorError as e:
            if e.problem and " is given twice" in e.problem:  # YAML keeps the last, silently
                twice = e.problem.split(" is given twice")[0]
                raise ConfigError(f"override {item!r}: {twice} is given twice in one mapping; give it once") from None
            raise ConfigError(f"override {item!r}: not a plain YAML value ({str(e).splitlines()[0]})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: not a plain YAML value ({str(e).splitlines()[0]})") from None
        if _YAML_COMMENT.search(raw) and not raw.lstrip().startswith(("'", '"')):
            value = raw.strip()  # YAML would drop the rest as a comment: the value is the text, whole
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override")
        node[parts[-1]] = Whole(value) if isinstance(value, dict) else value
    return out


def override_key(item: str) -> tuple[str, ...]:
    """The key a ``key=value`` override sets, as its parts: ``"optim.lr=1e-4"`` → ``("optim", "lr")``."""
    return tuple(item.split("=", 1)[0].strip().split("."))


def override_value(value: Any) -> str:
    """``value`` as the value of a ``key=value`` override that :func:`parse_overrides` reads back as ``value``: text
    as it is where it reads back so, else flow YAML: text in double quotes (`` #`` escaped, which would start a
    comment), a float with its decimal point (``5e-05`` reads back as text; ``5.0e-05`` as the number)."""
    if isinstance(value, str):
        try:
            if parse_overrides([f"key={value}"]).get("key") == value:
                return value
        except ConfigError:  # not plain YAML ('[x', '*x'): quoted
            pass
    return _flow_yaml(value)


def _flow_yaml(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_flow_yaml(str(k))}: {_flow_yaml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(map(_flow_yaml, value)) + "]"
    if isinstance(value, str):
        return json.dumps(value).replace(" #", "\\u0020#")  # JSON's separators are never followed by '#'
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        text = repr(value)
        return text if "." in text else text.replace("e", ".0e")
    return json.dumps(value)  # an int, a bool, None


def check_options(options: dict[str, tuple[str, str | None]], overrides: list[str]) -> None:
    """Refuse an option given together with a key=value override of its key that says otherwise (``--train X
    data.train=Y`` trained on X, silently); the same value twice is accepted, however the override quotes it
    (``data.train='a b'``: the value as the override is read). ``options``: key -> (flag, value)."""
    written = {k.strip(): v.strip() for k, _, v in (o.partition("=") for o in overrides)}  # as the user wrote it
    given = flatten(parse_overrides(overrides))  # as it is read
    for key, (flag, value) in options.items():
        if value is not None and key in given and given[key] != value:
            shown = written.get(key, given[key])
            raise ConfigError(f"{flag} {value} and {key}={shown}: two values for {key}; give one of them")


_INT, _FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"


class _PlainNumbersLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that reads numbers as written in decimal only. YAML 1.1 (PyYAML) also reads ``010`` as
    octal 8, ``0x10`` as 16, ``0b10`` as 2 and ``1:30`` as sexagesimal 90, so ``seed=010`` silently became 8 and
    ``batch_seconds=1:30`` 90 s; here those stay text, which a number setting refuses, naming its key."""

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT, _FLOAT)]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


_PlainNumbersLoader.add_implicit_resolver(_INT, re.compile(r"^[-+]?(?:0|[1-9][0-9_]*)$"), list("-+0123456789"))
_PlainNumbersLoader.add_implicit_resolver(
    _FLOAT, re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
                          |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
                          |[-+]?\.(?:inf|Inf|INF)
                          |\.(?:nan|NaN|NAN))$""", re.X), list("-+0123456789."))


def _plain_yaml(text: str) -> Any:
    """An override's value: plain YAML, numbers in decimal only, no key given twice in one mapping."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


class _UniqueKeyLoader(_PlainNumbersLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (YAML keeps the last, silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: expanded by the base loader
                continue
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(None, None, "found an unhashable key",
                                                        key_node.start_mark) from None
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (first on line {seen[key]})", key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def preset_file(preset_or_path: str | Path, preset_dir: Path = PRESET_DIR, what: str = "preset",
                command: str = "") -> Path:
    """The YAML file ``preset_or_path`` names: a file of that path, else ``preset_dir/NAME.yaml``. A folder of that
    name (a run's ``--out``) is no config: the preset it names is meant. ConfigError naming both when neither is.
    ``command`` (pretrain, finetune): its presets only, ``COMMAND-*``; another command's is refused, naming it."""
    p = Path(preset_or_path)
    if p.is_file():
        return p
    cand = preset_dir / f"{preset_or_path}.yaml"
    presets = sorted(x.stem for x in preset_dir.glob(f"{command}-*.yaml" if command else "*.yaml"))
    if command and cand.is_file() and cand.stem not in presets:  # another command's (COMMAND-NAME), or no command's
        whose = cand.stem.split("-")[0] if cand.parent == preset_dir and "-" in cand.stem else ""
        raise ConfigError(f"{preset_or_path}: {f'a preset of earful {whose}, not' if whose else 'not a preset'} of "
                          f"earful {command} (earful {command}'s presets: {presets})")
    if cand.is_file():
        return cand
    found = "a folder, not a config file," if p.is_dir() else "no such file"
    raise ConfigError(f"{preset_or_path}: {found} and no such {what} (presets: {presets})")


def read_yaml(preset_or_path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from a path, or from ``earful/configs/NAME.yaml`` for a preset name."""
    p = preset_file(preset_or_path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text ({e})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader) or {}
    except yaml.MarkedYAMLError as e:  # a tag such as !!python/object is refused here, never constructed
        mark = e.problem_mark
        at = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = e.problem or e.context or ""
        plain = " (earful configs are plain YAML: no tags, no code)" if "tag" in problem else ""
        raise ConfigError(f"{p}{at}: {problem}{plain}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a YAML mapping at the top level")
    return data


# settings renamed, by their old name: today's (the same values), as dotted keys of a training config
# (``model.init``: the ``model`` section's ``init``); a renamed setting stays in its section. A config file or
# override that says the old name is refused, naming the new (``given_settings``); what earful wrote before is read
# with today's names (``renamed_settings``), nested or flattened: a run folder's config.yaml and config-N.yaml,
# trainer.json's recipe, a study.json's fingerprint, a checkpoint's model.json ("model") and an exported
# transformers folder's earful_training (the ``model`` section's own keys). The fine-tuning's CTC loss
# normalisation (fairseq's sentence_avg) was called loss_normalisation, as the pre-training's
# model.loss_normalisation (its auxiliary losses' unit: another setting) still is; the model's weight
# initialisation scheme (fairseq, nanow2v2, torch) was model.init, as bare ``init`` (the weights a training starts
# from) still is; the fine-tuning's validation manifest (checked every valid_every steps, as the pre-training's
# data.valid) was data.dev
RENAMED_SETTINGS = {"loss_normalisation": "ctc_normalisation", "model.init": "model.weight_init",
                    "data.dev": "data.valid"}


# settings added in a later version, with what a recipe or a run folder's config that lacks them did: an earlier run
# folder (or study) holds that behaviour, not a change (fine-tuning's vocabulary was a-z and ' before vocab existed;
# the first GroupNorm's statistics were over the padded rows, group_norm_padding "included", before that setting).
# A checkpoint's recipe without one compares as that value (``earful.train.recipe.check_resume``), and a run folder's
# config.yaml without one reads as it (``given_settings``), so the run resumes with its own config
ADDED_LATER: dict[str, Any] = {"vocab": "english", "model.feature_grad_mult": None,
                               "model.group_norm_padding": "included"}


def new_name(key: str, table: dict[str, str] = RENAMED_SETTINGS) -> str | None:
    """Dotted ``key``'s name today by ``table`` (old name → new), or None where it was not renamed; an entry
    below a renamed key moves with it (a fine-tuning recipe's ``data.dev.sha256`` is ``data.valid.sha256``)."""
    if key in table:
        return table[key]
    return next((new + key[len(old):] for old, new in table.items() if key.startswith(f"{old}.")), None)


def renamed_settings(data: dict[str, Any], within: str = "", table: dict[str, str] = RENAMED_SETTINGS
                     ) -> dict[str, Any]:
    """A config or recipe earful wrote before, nested or flattened, with today's names for ``table``'s keys
    (``RENAMED_SETTINGS``; a study's: ``earful.study.config.RENAMED``); ``within``: the section ``data`` is, where
    it is one (``model``: model.json's "model")."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{within}.{k}" if within else str(k)
        new = new_name(key, table)
        inside = isinstance(v, dict) and any(old.startswith(f"{key}.") for old in table)
        out[new.removeprefix(f"{within}.") if new is not None else k] = (
            renamed_settings(v, key, table) if inside else v)
    return out


def renamed_override(item: str) -> str:
    """A ``key=value`` override earful recorded before (a study.json's) with today's key for ``RENAMED_SETTINGS``."""
    key, sep, value = item.partition("=")
    name = key.strip()  # the key's text alone is replaced: "loss_normalisation = token" keeps its spaces
    return key.replace(name, new, 1) + sep + value if (new := new_name(name)) is not None else item


def _has_setting(cls: type, key: str) -> bool:
    """Whether config dataclass ``cls`` has the dotted setting ``key`` (``model.weight_init``)."""
    *sections, name = key.split(".")
    for section in sections:
        if (inner := _sections(cls).get(section)) is None:
            return False
        cls = inner
    return name in {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]


def _refuse_renamed(cls: type, said: list[tuple[str, str]], within: str = "") -> None:
    """Refuse a config for ``cls`` (the section ``within``, where it is one) that says a renamed setting's old name,
    naming the new as ``cls`` has it. ``said``: each dotted key given, with what gave it ("" for the config file,
    which the caller names; an override)."""
    at = f"{within}." if within else ""
    new = {k: RENAMED_SETTINGS[at + k].removeprefix(at) for k, _ in said if at + k in RENAMED_SETTINGS}
    old = [(k, where) for k, where in said if k in new and _has_setting(cls, new[k])]
    if old:  # a section's key named with its section too: a preset's "init" is not the training's init
        raise ConfigError("; ".join(f"{where}{k}{f' ({at}{k})' if at else ''} is now called {new[k]}"
                                    f"{f' ({at}{new[k]})' if at else ''} (the same values)" for k, where in old))


def given_settings(cls: type, given: dict[str, Any], overrides: list[str] | None = None, *, saved: bool = False,
                   within: str = "") -> dict[str, Any]:
    """``given``, the YAML a config for ``cls`` is read from, given with ``key=value`` ``overrides``: a renamed
    setting's old name (``RENAMED_SETTINGS``) is refused in either, naming the new, but in a YAML file earful wrote
    (``saved``: a run folder's config.yaml), which is read with today's names, and a setting added since that it
    lacks as what the run trained with (``ADDED_LATER``). ``within``: the section ``cls`` is, where it is one
    (``model``)."""
    _refuse_renamed(cls, [(k, "") for k in flatten(given) if not saved] +
                    [(k, f"override {o!r}: ") for o in overrides or [] for k in flatten(parse_overrides([o]))],
                    within)  # an override's every key: 'model={init: torch}' says model.init
    return _with_added_later(cls, renamed_settings(given, within), within) if saved else given


def _with_added_later(cls: type, given: dict[str, Any], within: str = "") -> dict[str, Any]:
    """``given``, a config earful wrote, with each setting of ``ADDED_LATER`` that ``cls`` has and ``given`` lacks
    set to what the run trained with before it existed (read as today's default, a run of before 96e4481 resumed
    with its own config.yaml was refused: "model.group_norm_padding: 'included' -> 'excluded'")."""
    at = f"{within}." if within else ""
    present = flatten(given)
    out = dict(given)
    for key, value in ADDED_LATER.items():
        if not key.startswith(at) or (own := key.removeprefix(at)) in present or not _has_setting(cls, own):
            continue
        *sections, name = own.split(".")
        node = out
        for section in sections:
            child = node.get(section) or {}
            if not isinstance(child, dict):  # not a mapping: the config's own error names it
                break
            node[section] = node = dict(child)
        else:
            node[name] = value
    return out


def load_config(
    cls: type[T], preset_or_path: str | Path | None = None, overrides: list[str] | None = None, *,
    saved: bool = False, within: str = "",
) -> T:
    """Defaults ← YAML (preset name or path) ← ``key=value`` overrides. A renamed setting's old name
    (``RENAMED_SETTINGS``) is refused, naming the new, but in a YAML file earful wrote (``saved``: a run folder's
    config.yaml), which is read with today's names (:func:`given_settings`; ``within``: the section ``cls`` is)."""
    given = read_yaml(preset_or_path) if preset_or_path is not None else {}
    data = merge(to_dict(cls()), given_settings(cls, given, overrides, saved=saved, within=within), cls)
    if overrides:
        data = merge(data, parse_overrides(overrides), cls)
    return from_dict(cls, data)


def config_yaml(cfg: Any) -> str:
    """``cfg`` as the YAML a run folder's config.yaml holds: every setting, in the dataclasses' order."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_yaml(cfg: Any, path: str | Path) -> None:
    with atomic_open(path) as f:
        f.write(config_yaml(cfg))
