"""Typed dataclass trees from YAML layers: the generic half of `rlhf_ray.config`.

`build(cls, layers)` checks each layer (a YAML file or command-line overrides) against the dataclass
annotations — unknown keys (with the nearest valid one, or why it went when a class's `REMOVED` maps a former
key to the reason), wrong types, values outside a Literal, numbers outside their Range and strings past their
Length (rlhf_ray.bounds) — and reports every problem with its file and line, a long value clipped. Nothing is
coerced except an integer given where a float is expected. A file is read only when it is a regular file within
MAX_BYTES (`read_capped`), and its YAML only within the limits below.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import os
import re
import stat
import textwrap
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import yaml

from rlhf_ray.bounds import Length, Range
from rlhf_ray.errors import UserError


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-5` as a string (it wants `1.0e-5`); learning rates are written that way, so plain
    scientific notation resolves to a float here."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)$|^[-+]?(?:\d+\.\d*|\.\d+)$"
               r"|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."),
)


class ConfigError(UserError):
    """Every problem found in a config, each naming its key and where it was set."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        many = len(problems) > 1
        super().__init__("invalid config:" + ("\n" if many else " ") + "\n".join(f"  - {p}" if many else p
                                                                             for p in problems))


@dataclass
class _Source:
    """Where a value came from, for error messages."""

    file: str
    lines: dict[str, int]  # dotted key -> 1-based line

    def at(self, key: str) -> str:
        line = self.lines.get(key)
        return f"{self.file}:{line}" if line else self.file


def _key_lines(node: yaml.Node, prefix: str = "") -> dict[str, int]:
    """Dotted key -> line of each mapping key in a composed YAML document."""
    out: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = f"{prefix}{k.value}"
            out[key] = k.start_mark.line + 1
            out.update(_key_lines(v, key + "."))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out.update(_key_lines(v, f"{prefix[:-1]}[{i}]."))
    return out


# A config is a few KiB of a few levels. The limits turn a hostile file (an alias bomb: a few lines whose aliases
# expand to billions of nodes; thousands of nested brackets) into one message instead of a hang or a traceback.
MAX_BYTES, MAX_NODES, MAX_DEPTH = 1 << 20, 100_000, 64


def _shape(node: yaml.Node, depth: int, seen: dict[int, tuple[int, int, int]]) -> tuple[int, int, int]:
    """(values, levels, characters) of `node` with every alias expanded, counted once per distinct node (linear
    in the file); stops past MAX_DEPTH, which also ends an alias that contains itself."""
    if depth > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    if id(node) not in seen:
        kids = ([x for pair in node.value for x in pair] if isinstance(node, yaml.MappingNode) else
                node.value if isinstance(node, yaml.SequenceNode) else [])
        shapes = [_shape(k, depth + 1, seen) for k in kids]
        chars = len(node.value) if isinstance(node, yaml.ScalarNode) else sum(c for *_, c in shapes)
        seen[id(node)] = (1 + sum(n for n, *_ in shapes), 1 + max((d for _, d, _ in shapes), default=0), chars)
    nodes, levels, chars = seen[id(node)]
    if depth + levels > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels once its aliases are expanded")
    if nodes > MAX_NODES:
        raise ValueError(f"expands to {nodes:,} values once its aliases are expanded (at most {MAX_NODES:,})")
    if chars > MAX_BYTES:  # a long string repeated by aliases
        raise ValueError(f"expands to {chars:,} characters once its aliases are expanded (at most {MAX_BYTES:,})")
    return nodes, levels, chars


def load_yaml(text: str, where: str) -> tuple[Any, yaml.Node | None]:
    """YAML text (a file's or an override's) as data and its node tree, within the limits above."""
    if len(text) > MAX_BYTES:
        raise ConfigError([f"{where}: {len(text):,} characters; a config is at most {MAX_BYTES:,}"])
    try:
        node = (loader := _Loader(text)).get_single_node()  # parsed once: checked as nodes, then built
        if node is not None:
            _shape(node, 0, {})
        return (loader.construct_document(node) if node is not None else None), node
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise ConfigError([f"{where}{at}: not valid YAML: {e.problem or e.context}"]) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"{where}: not valid YAML: {' '.join(str(e).split())}"]) from None
    except (ValueError, RecursionError) as e:
        raise ConfigError([f"{where}: {e if isinstance(e, ValueError) else 'nested too deeply to read'}"]) from None


_KIND = {  # what a path that is not a regular file is, for the message
    stat.S_IFIFO: "FIFO", stat.S_IFCHR: "character device", stat.S_IFBLK: "block device",
    stat.S_IFDIR: "directory", stat.S_IFSOCK: "socket"}


def read_capped(path: Path, limit: int = MAX_BYTES) -> bytes:
    """The bytes of a regular file of at most `limit` bytes, else one ConfigError naming `path`. Opened without
    blocking (a FIFO would wait for a writer), checked by fstat before any read (a FIFO, a device such as /dev/zero
    or a directory is refused, as is a file over the limit, unread), then read to `limit` + 1 bytes at most: a file
    that grows after the check is refused too, never read whole."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror}"]) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError([f"{path}: not a regular file (a {_KIND.get(stat.S_IFMT(st.st_mode), 'special file')}); "
                               "a config is a YAML file"])
        if st.st_size > limit:
            raise ConfigError([f"{path}: {st.st_size:,} bytes; a config is at most {limit:,}"])
        chunks, size = [], 0
        while size <= limit and (chunk := os.read(fd, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise ConfigError([f"{path}: more than {limit:,} bytes (it grew while read); a config is at most "
                               f"{limit:,}"])
        return b"".join(chunks)
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror}"]) from None
    finally:
        os.close(fd)


def read_yaml(path: Path) -> tuple[dict, _Source]:
    try:
        text = read_capped(path).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError([f"{path}: not a YAML text file (byte {e.object[e.start]:#04x} at offset {e.start} is not "
                           "UTF-8)"]) from None
    data, node = load_yaml(text, str(path))
    if not data:  # an empty file would be a run of every default: PPO of the built-in model on no prompts
        raise ConfigError([f"{path}: the config is empty; it needs at least `stages` and the data they read"])
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of keys, got {type(data).__name__}"])
    return data, _Source(str(path), _key_lines(node) if node else {})


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        tree = tree.setdefault(p, {})
        if not isinstance(tree, dict):
            raise ConfigError([f"command line: {_key(key)}: {_clip(p)} is not a section"])
    tree[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict:
    """`["ppo.kl_coef=0.05", "stages=[sft,rm]"]` -> nested dict; values are parsed as YAML scalars/lists."""
    tree: dict = {}
    for o in overrides:
        key, sep, raw = o.partition("=")
        if not sep or not key:
            raise ConfigError([f"command line: {_clip(o)} is not of the form key=value"])
        try:
            value = load_yaml(raw, f"command line: {_key(key)}")[0] if raw else ""
        except ConfigError as e:
            if "not valid YAML" not in str(e):  # past a limit: refused; merely not YAML: the text itself
                raise
            value = raw
        _set_dotted(tree, key.strip(), value)
    return tree


def _field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal under each field) of a dataclass."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for a, b in zip(body, body[1:]):
        if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant):
            docs[a.target.id] = " ".join(str(b.value.value).split())
    return docs


def field_docs(cls: type) -> dict[str, str]:
    """Public: the docstring of every field of a config dataclass (empty string when missing)."""
    docs = _field_docs(cls)
    return {f.name: docs.get(f.name, "") for f in dataclasses.fields(cls)}


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _loc(where: Any, key: str) -> str:
    return where.at(key) if isinstance(where, _Source) else str(where)


def _bounds(tp: Any) -> list[Range | Length]:
    """The bounds (rlhf_ray.bounds) an annotation declares: `Size` -> [Range(1, 2**20)]; none for a bare type."""
    return [m for m in getattr(tp, "__metadata__", ()) if isinstance(m, (Range, Length))]


def _clip(value: Any, most: int = 80) -> str:
    """`repr(value)` for a message, its middle cut when long: a megabyte of YAML makes one readable line."""
    text = repr(value)
    return text if len(text) <= most else f"{text[:most // 2]}...{text[-most // 4:]} ({len(text):,} characters)"


def _key(k: Any) -> str:
    """A mapping key as a message names it: as written, or clipped when long."""
    return str(k) if len(str(k)) <= 80 else _clip(str(k))


def _convert(value: Any, tp: Any, key: str, errs: list[str], where: Any) -> Any:
    """Check `value` against the annotation `tp`; build dataclasses; collect errors as `file:line: key: msg`."""
    loc = _loc(where, key)
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:  # a number with its Range, a string with its Length (rlhf_ray.bounds)
        n = len(errs)
        value = _convert(value, typing.get_args(tp)[0], key, errs, where)
        problems = [m.problem(value) for m in _bounds(tp)] if len(errs) == n else []
        errs += [f"{loc}: {key}: {p}" for p in problems if p]
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _convert(value, inner[0], key, errs, where)
        for tp in inner:  # the first type the value fits (`str | list[str]`)
            trial: list[str] = []
            out = _convert(value, tp, key, trial, where)
            plain = typing.get_args(tp)[0] if typing.get_origin(tp) is typing.Annotated else tp
            kind = typing.get_origin(plain) or plain
            if not trial or (kind in (str, list, dict) and isinstance(value, kind)):  # its kind: say what is wrong
                errs += trial
                return out
        errs.append(f"{loc}: {key}: expected {' or '.join(_type_text(a, False) for a in inner)}, got {_clip(value)}")
        return value
    if origin is Literal:
        choices = typing.get_args(tp)
        if not any(type(c) is type(value) and c == value for c in choices):
            errs.append(f"{loc}: {key}: {_clip(value)} is not one of {', '.join(map(repr, choices))}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            errs.append(f"{loc}: {key}: expected a section (mapping), got {_clip(value)}")
            return tp()
        return build_tree(tp, value, key + ".", errs, where)
    if origin is list:
        if not isinstance(value, list):
            errs.append(f"{loc}: {key}: expected a list, got {_clip(value)}")
            return []
        (item,) = typing.get_args(tp)
        return [_convert(v, item, f"{key}[{i}]", errs, where) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            errs.append(f"{loc}: {key}: expected a mapping, got {_clip(value)}")
            return {}
        name, item = typing.get_args(tp)
        for k in value:  # a name's bound (Length) holds for the keys too
            errs += [f"{loc}: {key}: a key of {p}" for p in (m.problem(str(k)) for m in _bounds(name)) if p]
        return {str(k): _convert(v, item, f"{key}.{_key(k)}", errs, where) for k, v in value.items()}
    ok = isinstance(value, tp) and not (tp is not bool and isinstance(value, bool))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)  # 1 is a fine float; the reverse is not accepted
        except OverflowError:
            errs.append(f"{loc}: {key}: must be a finite number, got an integer of {len(str(value))} digits")
            return 0.0
    if not ok:
        errs.append(f"{loc}: {key}: expected {_TYPE_NAMES.get(tp, tp.__name__)}, got {_clip(value)}")
    return value


UNKNOWN_KEY_HINT: Optional[Callable[[str, Any], Optional[str]]] = None
"""What an unknown key (dotted, with its value) is called in this tree, or None: set by the tree's owner
(rlhf_ray/config.py: the peers' names, rlhf_ray/peer_names.py); spelling hints are given only without one."""


def build_tree(cls: type, values: dict, prefix: str, errs: list[str], where: Any) -> Any:
    """Check a tree (the whole config, or a partial one: a stage's own settings) against `cls` and build it, errors
    keyed under `prefix`."""
    hints = typing.get_type_hints(cls, include_extras=True)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in values.items():
        key = f"{prefix}{_key(k)}"
        if k not in names and k in getattr(cls, "REMOVED", {}):  # a key that was, and why it went
            errs.append(f"{_loc(where, key)}: {key}: no longer a setting: {cls.REMOVED[k]}")
            continue
        if k not in names:
            peer = UNKNOWN_KEY_HINT(key, v) if UNKNOWN_KEY_HINT else None  # another framework's name for a key
            near = difflib.get_close_matches(str(k), names, n=1, cutoff=0.5)
            hint = (f"; {peer}" if peer else f"; did you mean {prefix}{near[0]}?" if near else
                    f"; valid keys: {', '.join(names)}")
            errs.append(f"{_loc(where, key)}: {key}: unknown key{hint}")
            continue
        kwargs[k] = _convert(v, hints[k], key, errs, where)
    for f in dataclasses.fields(cls):
        # A mapping field (e.g. cluster.roles) keeps its default entries that the YAML does not mention:
        # overriding one role must not delete the others.
        if isinstance(kwargs.get(f.name), dict) and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
            if isinstance(default, dict):
                kwargs[f.name] = {**default, **kwargs[f.name]}
    return cls(**kwargs)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build(cls: type, layers: list[tuple[dict, Any]]) -> tuple[Any, list[str]]:
    """Validate each layer alone (so errors name their own file), then build the merged tree."""
    errs: list[str] = []
    for values, where in layers:
        build_tree(cls, values, "", errs, where)
    merged: dict = {}
    for values, _ in layers:
        merged = _merge(merged, values)
    cfg = build_tree(cls, merged, "", [], "") if not errs else None
    return cfg, errs


_MISSING = object()


def where_set(key: str, layers: list[tuple[dict, Any]]) -> str:
    """The last layer that set `key`, for errors found after merging (else the file, else `defaults`)."""
    parts = re.sub(r"\[\d+\]", "", key).split(".")
    for values, where in reversed(layers):
        node: Any = values
        for p in parts:
            node = node.get(p, _MISSING) if isinstance(node, dict) else _MISSING
        if node is not _MISSING:
            return _loc(where, ".".join(parts))
    files = [w.file for _, w in layers if isinstance(w, _Source)]
    return files[0] if files else "defaults"


# ---------------------------------------------------------------- the reference, from the docstrings

_KIND_NAMES = {int: "integer", float: "number", str: "string", bool: "boolean", dict: "mapping", Any: "any"}


def _type_text(tp: Any, bounds: bool = True) -> str:
    """An annotation as a reader of YAML sees it: `integer`, `string or null`, `` `a` | `b` ``, `list of string`;
    with its bounds (`integer in [1, 1,048,576]`) unless not `bounds`."""
    origin, text = typing.get_origin(tp), lambda t: _type_text(t, bounds)
    if origin is typing.Annotated:
        ranges = [str(m) for m in _bounds(tp)] if bounds else []
        inner = text(typing.get_args(tp)[0])
        return f"finite {inner}" if ranges == ["finite"] else " ".join([inner, *ranges])
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        inner = " or ".join(text(a) for a in args if a is not type(None))
        return f"{inner} or null" if type(None) in args else inner
    if origin is Literal:
        return " \\| ".join(f"`{_yaml_text(c)}`" for c in typing.get_args(tp))
    if origin is list:
        return f"list of {text(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"mapping of name to {text(typing.get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return "section"
    return _KIND_NAMES.get(tp, getattr(tp, "__name__", str(tp)))


def _yaml_text(value: Any) -> str:
    """A default as it would be written in YAML, on one line."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):  # `{}`: a section at its defaults (listed in its own table)
            return {k: x for k, x in dataclasses.asdict(v).items() if x != getattr(type(v)(), k)}
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return [plain(x) for x in v] if isinstance(v, list) else v

    text = yaml.safe_dump(plain(value), default_flow_style=True, width=10**6, sort_keys=False).strip()
    return text.removesuffix("\n...").strip()


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _cell(text: str) -> str:
    """Text for a table cell: pipes escaped, and `<` outside code spans (GitHub would read `<run dir>` as HTML)."""
    parts = text.replace("|", "\\|").replace("\n", " ").split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;") for i, p in enumerate(parts))


def _class_doc(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    return "" if doc.startswith(cls.__name__ + "(") else " ".join(doc.split())  # dataclass' generated signature


def _sections(cls: type, prefix: str) -> list[tuple[str, type]]:
    """(dotted prefix, dataclass) of `cls` and every section below it, depth first, in field order."""
    out = [(prefix, cls)]
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, key = hints[f.name], f"{prefix}{f.name}"
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args:
            tp = next(a for a in args if a is not type(None))  # an optional section (model.lora)
            origin, args = typing.get_origin(tp), typing.get_args(tp)
        if dataclasses.is_dataclass(tp):
            out += _sections(tp, key + ".")
        elif origin is dict and dataclasses.is_dataclass(args[1]):
            out += _sections(args[1], key + ".<name>.")
        elif origin is list and dataclasses.is_dataclass(args[0]):
            out += _sections(args[0], key + "[].")
    return out


def reference_markdown(cls: type, command: str = "") -> str:
    """Markdown reference of a config tree: the tree's module docstring, then one table per section (key, type,
    default, the field's docstring), depth first in field order. `command` is the one that regenerates it."""
    module = inspect.getmodule(cls)
    lines = ["# Configuration reference", ""]
    if command:
        lines += [f"Generated from the docstrings of `{module.__name__}` by `{command}`; do not edit by hand.", ""]
    lines += [inspect.getdoc(module) or "", ""]
    for prefix, section in _sections(cls, ""):
        hints = typing.get_type_hints(section, include_extras=True)
        lines += [f"## `{prefix.rstrip('.') or '(top level)'}`", ""]
        if _class_doc(section):
            lines += [_class_doc(section), ""]
        lines += ["| key | type | default | what |", "|---|---|---|---|"]
        docs = field_docs(section)
        for f in dataclasses.fields(section):
            tp = hints[f.name]
            default = "(section)" if dataclasses.is_dataclass(tp) else f"`{_cell(_yaml_text(_default(f)))}`"
            lines.append(f"| `{prefix}{f.name}` | {_type_text(tp)} | {default} | {_cell(docs[f.name])} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


REGENERATE = "python -m rlhf_ray.yaml_tree"  # the command that rewrites docs/configuration.md
_REPO = Path(__file__).resolve().parents[1]


def to_dict(cfg: Any) -> dict:
    """A resolved config (any dataclass tree) as plain YAML-able data."""
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def main(argv: list[str] | None = None) -> int:
    """`python -m rlhf_ray.yaml_tree [--check] [MODULE:CLASS] [OUT]`: write (or, with --check, compare) the
    reference of a config tree; by default rlhf_ray.config:Config into the repository's docs/configuration.md."""
    import argparse
    import importlib

    p = argparse.ArgumentParser(prog="python -m rlhf_ray.yaml_tree", description=main.__doc__)
    p.add_argument("tree", nargs="?", default="rlhf_ray.config:Config", help="MODULE:CLASS of the config tree")
    p.add_argument("out", nargs="?", default=str(_REPO / "docs" / "configuration.md"), help="the markdown file")
    p.add_argument("--check", action="store_true", help="exit 1 when OUT differs from what would be written")
    args = p.parse_args(argv)
    module, _, name = args.tree.partition(":")
    text = reference_markdown(getattr(importlib.import_module(module), name), REGENERATE)
    out = Path(args.out)
    if args.check:
        same = out.exists() and out.read_text() == text
        print(f"{out}: {'up to date' if same else 'out of date; regenerate it with `' + REGENERATE + '`'}")
        return 0 if same else 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

