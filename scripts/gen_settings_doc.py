#!/usr/bin/env python3
"""Write docs/settings.md, the settings reference, from the pydantic models.

    python scripts/gen_settings_doc.py            rewrite docs/settings.md
    python scripts/gen_settings_doc.py --check    exit 1 when docs/settings.md is stale
                                                  or a setting has no description

The reference walks :class:`edgecloud.config.Settings` recursively: every key
with its TOML path, its ``EDGECLOUD_*`` variable, type, default, bounds and
description. Defaults that depend on the machine (the cache directory, the
thread count) are written as the rule that computes them, so the file is the
same on every machine. tests/unit/test_settings_doc.py fails when the file is
stale, so a new field lands with its documentation.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import inspect
import json
import math
import sys
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing it
    sys.path.insert(0, str(ROOT))

from edgecloud.common.settings import default_cache_dir, default_threads  # noqa: E402
from edgecloud.config import Settings  # noqa: E402

__all__ = ["OUTPUT", "Entry", "entries", "main", "missing_descriptions", "render"]

OUTPUT = ROOT / "docs" / "settings.md"
ENV_PREFIX = "EDGECLOUD_"

# Defaults computed on the machine, written as their rule. A named function used as
# a default factory that is not listed here is written as its docstring's first line
# (never called), so the reference cannot pick up one machine's value.
MACHINE_DEFAULTS: dict[Callable[[], Any], str] = {
    default_cache_dir: "`$XDG_CACHE_HOME/edgecloud`, else `~/.cache/edgecloud`",
    default_threads: "CPU count, at most 8",
}


@dataclasses.dataclass(frozen=True)
class Entry:
    """One line of the reference: a section header (``section=True``) or a key."""

    path: str
    """TOML path: ``device.router.window``; items of an array of tables get ``[]``."""
    env: str | None
    """The environment variable, or None inside an array of tables (set the whole array)."""
    type: str
    default: str
    bounds: str
    description: str
    section: bool = False
    array: bool = False
    """An array of tables (``[[device.cloud.endpoints]]``)."""


def _model_of(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """(the section model an annotation holds, whether it is a list of them)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (list, tuple) and args:
        item = args[0]
        if isinstance(item, type) and issubclass(item, BaseModel):
            return item, True
    if origin in (typing.Union, types.UnionType):
        kept = [a for a in args if a is not type(None)]
        if len(kept) == 1:  # an optional section: documented like a present one
            return _model_of(kept[0])
    return None, False


def _type_name(annotation: Any) -> str:
    if annotation is type(None):
        return "none"
    if annotation is Path or (isinstance(annotation, type) and issubclass(annotation, Path)):
        return "path"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "table"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{json.dumps(a)}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        kept = [a for a in args if a is not type(None)]
        inner = " or ".join(_type_name(a) for a in kept)
        return f"{inner}, optional" if len(kept) < len(args) else inner
    if origin in (list, tuple, set, frozenset):
        item = args[0] if args else Any
        return f"list of {_type_name(item)}"
    if origin is dict:
        key, value = args if args else (Any, Any)
        return f"table of {_type_name(key)} → {_type_name(value)}"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _toml_value(value: Any) -> str:
    """A default as it would be written in TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Path):
        return json.dumps(str(value))
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(str(value))


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    factory = field.default_factory
    if factory is not None:
        if factory in MACHINE_DEFAULTS:
            return MACHINE_DEFAULTS[factory]
        is_named_function = inspect.isfunction(factory) and factory.__name__ != "<lambda>"
        if is_named_function:
            doc = inspect.getdoc(factory) or factory.__name__
            return doc.splitlines()[0]
        try:
            value = factory()  # type: ignore[call-arg]
        except TypeError:  # a factory of the validated data: nothing to show statically
            return "computed from the other settings"
    else:
        value = field.default
    if value is None or value is PydanticUndefined:
        return "unset"
    return f"`{_toml_value(value)}`"


def _bounds(field: FieldInfo) -> str:
    parts: list[str] = []
    for meta in field.metadata:
        if isinstance(meta, annotated_types.Ge):
            parts.append(f"≥ {_toml_value(meta.ge)}")
        elif isinstance(meta, annotated_types.Gt):
            parts.append(f"> {_toml_value(meta.gt)}")
        elif isinstance(meta, annotated_types.Le):
            parts.append(f"≤ {_toml_value(meta.le)}")
        elif isinstance(meta, annotated_types.Lt):
            parts.append(f"< {_toml_value(meta.lt)}")
        elif isinstance(meta, annotated_types.MinLen):
            parts.append(f"length ≥ {meta.min_length}")
        elif isinstance(meta, annotated_types.MaxLen):
            parts.append(f"length ≤ {meta.max_length}")
        elif getattr(meta, "pattern", None) is not None:
            parts.append(f"matches `{meta.pattern}`")
    return ", ".join(parts)


def _section_doc(model: type[BaseModel], field: FieldInfo | None) -> str:
    # The class's own docstring: inspect.getdoc would inherit Section's.
    own = inspect.cleandoc(model.__doc__) if model.__doc__ else ""
    lines = [own.split("\n\n")[0].replace("\n", " ")] if own else []
    if field is not None and field.description:
        lines.append(field.description)
    return " ".join(lines)


def _walk(model: type[BaseModel], prefix: str, env: str | None) -> Iterator[Entry]:
    sections: list[tuple[str, FieldInfo, type[BaseModel], bool]] = []
    for name, field in model.model_fields.items():
        sub, is_list = _model_of(field.annotation)
        path = f"{prefix}{name}"
        if sub is not None and not is_list:
            sections.append((name, field, sub, False))
            continue
        if sub is not None and is_list:
            sections.append((name, field, sub, True))
            continue
        yield Entry(
            path=path,
            env=f"{env}{name.upper()}" if env is not None else None,
            type=_type_name(field.annotation),
            default=_default(field),
            bounds=_bounds(field),
            description=field.description or "",
        )
    # Keys first, then sub-tables: the order a TOML file needs them in.
    for name, field, sub, is_list in sections:
        path = f"{prefix}{name}"
        sub_env = f"{env}{name.upper()}" if env is not None else None
        yield Entry(
            path=path,
            env=sub_env if is_list else None,
            type="array of tables" if is_list else _type_name(field.annotation),
            default=_default(field) if is_list else "",
            bounds=_bounds(field) if is_list else "",
            description=_section_doc(sub, field),
            section=True,
            array=is_list,
        )
        if is_list:
            yield from _walk(sub, f"{path}[].", None)
        else:
            yield from _walk(sub, f"{path}.", f"{sub_env}__" if sub_env else None)


def entries(root: type[BaseModel] = Settings) -> list[Entry]:
    """Every section and key under ``root``, in document order."""
    return list(_walk(root, "", ENV_PREFIX))


def missing_descriptions(root: type[BaseModel] = Settings) -> list[str]:
    """TOML paths of the keys and sections that have no description."""
    return [e.path for e in entries(root) if not e.description.strip()]


def _md(text: str) -> str:
    """Prose for Markdown: RST double backticks become code spans, and outside code
    spans the characters Markdown or HTML would take as markup (``<cache_dir>``,
    ``*.md``) are escaped."""
    parts = text.replace("``", "`").replace("\n", " ").split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("*", "\\*").replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts)


def _cell(text: str) -> str:
    return _md(text).replace("|", "\\|")


HEADER = """\
# Settings reference

<!-- Generated by scripts/gen_settings_doc.py from the pydantic models; do not edit.
     tests/unit/test_settings_doc.py fails when this file is stale. -->

Every edgecloud process (the `edgecloud` command, `Client`, the cloud service) reads
one `Settings` object (`edgecloud/config.py`). Each value comes from the first of:

1. keyword arguments to `Settings.load(path, **overrides)` (top-level keys);
2. an environment variable: `EDGECLOUD_` and the key's path in upper case, nested keys
   joined by `__` (`device.router.window` is `EDGECLOUD_DEVICE__ROUTER__WINDOW`); lists
   and tables take JSON (`EDGECLOUD_DEVICE__GENERATION__STOP='["\\n"]'`);
3. the TOML file: `--config FILE` (on the commands that take it), else `$EDGECLOUD_CONFIG`;
4. the default below.

Options of a command (`edgecloud cloud serve --port 50052`) and of `Client.local`
(`n_ctx=4096`) override the settings for that run. Unknown keys and values out of
bounds fail at start with a `ConfigError` naming the key.

Keys of an array of tables (`[[device.cloud.endpoints]]`) have no variable of their
own: set the whole array as JSON. "unset" means the key is left out of the file; the
description says what that does. Example files: `device/device.toml` and
`cloud/cloud.example.toml`.
"""


def render(root: type[BaseModel] = Settings) -> str:
    """The whole reference as Markdown."""
    out = [HEADER]
    rows: list[str] = []

    def flush() -> None:
        if rows:
            out.append("| key | type | default | bounds | description |")
            out.append("|---|---|---|---|---|")
            out.extend(rows)
            out.append("")
            rows.clear()

    out.append("## Top level\n")
    for e in entries(root):
        if e.section:
            flush()
            table = f"[[{e.path}]]" if e.array else f"[{e.path}]"
            out.append(f"## `{table}`\n")
            if e.description:
                out.append(_md(e.description) + "\n")
            if e.array:
                details = [f"Default: {e.default}."]
                if e.bounds:
                    details.append(f"Bounds: {e.bounds}.")
                if e.env:
                    details.append(f"Environment: `{e.env}` (JSON array of tables).")
                out.append(" ".join(details) + "\n")
            continue
        key = f"`{e.path}`" + (f"<br>`{e.env}`" if e.env else "")
        cells = [_cell(c) for c in (e.type, e.default, e.bounds or "–", e.description or "(none)")]
        rows.append("| " + " | ".join([key, *cells]) + " |")
    flush()
    return "\n".join(out).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write docs/settings.md, or with ``--check`` say whether it is up to date."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail when the file is stale")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="default: docs/settings.md")
    args = parser.parse_args(argv)
    text = render()
    missing = missing_descriptions()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        status = 0
        if current != text:
            diff = difflib.unified_diff(
                current.splitlines(keepends=True),
                text.splitlines(keepends=True),
                str(args.output),
                "generated",
            )
            sys.stderr.writelines(diff)
            print(
                f"{args.output} is stale: run scripts/gen_settings_doc.py and commit it",
                file=sys.stderr,
            )
            status = 1
        if missing:
            print("settings without a description: " + ", ".join(missing), file=sys.stderr)
            status = 1
        if status == 0:
            print(f"{args.output} is up to date")
        return status
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")
    if missing:
        print("settings without a description: " + ", ".join(missing), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
