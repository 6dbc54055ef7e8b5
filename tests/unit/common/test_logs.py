"""Structured logs: the JSON formatter, the text one, request ids and configure()."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgecloud.common import logs
from edgecloud.common.logs import JsonFormatter, bind_request_id, clean_request_id


def record(msg: str = "hello %s", *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.getLogger("edgecloud.test").makeRecord(
        "edgecloud.test", logging.WARNING, __file__, 1, msg, args or ("world",), None,
        extra=extra or None,
    )  # fmt: skip
    return rec


def test_a_json_line_has_the_fields_the_request_id_and_the_extras() -> None:
    with bind_request_id("req-1"):
        line = json.loads(JsonFormatter().format(record(user=7, where={"a": 1})))
    assert line.pop("ts").endswith("+00:00")
    assert line == {
        "level": "WARNING", "logger": "edgecloud.test", "message": "hello world",
        "request_id": "req-1", "user": 7, "where": {"a": 1},
    }  # fmt: skip


def test_a_library_s_private_record_fields_are_not_extras() -> None:
    # Ray's log record factory stamps every record with _ray_timestamp_ns once imported
    # (set here on the record itself: with Ray imported, makeRecord refuses it as extra).
    rec = record(user=7)
    rec._lib_timestamp_ns = 1  # type: ignore[attr-defined]
    line = json.loads(JsonFormatter().format(rec))
    assert line["user"] == 7 and "_lib_timestamp_ns" not in line
    assert not [key for key in line if key.startswith("_")]


def test_without_a_request_id_the_line_has_none_and_odd_values_are_strings() -> None:
    line = json.loads(JsonFormatter().format(record(blob=object(), path=Path("/x"))))
    assert "request_id" not in line
    assert line["path"] == "/x" and line["blob"].startswith("<object object")


def test_an_explicit_request_id_wins_and_exceptions_are_one_field() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        rec = record(request_id="given")
        rec.exc_info = sys.exc_info()
    with bind_request_id("bound"):
        line = json.loads(JsonFormatter().format(rec))
    assert line["request_id"] == "given"
    assert "ValueError: boom" in line["exc"] and "\n" in line["exc"]


def test_text_lines_name_the_request_after_the_logger() -> None:
    fmt = logs.formatter("text")
    assert fmt.format(record()) == "WARNING edgecloud.test: hello world"
    with bind_request_id("abc"):
        assert fmt.format(record()) == "WARNING edgecloud.test [abc]: hello world"
    with pytest.raises(ValueError, match="unknown log format"):
        logs.formatter("xml")  # type: ignore[arg-type]


def test_binding_is_per_context_and_undone_after_the_block() -> None:
    async def task(rid: str) -> str | None:
        with bind_request_id(rid):
            await asyncio.sleep(0.01)
            return logs.current_request_id()

    async def main() -> list[str | None]:
        return list(await asyncio.gather(task("a"), task("b")))

    assert asyncio.run(main()) == ["a", "b"]
    assert logs.current_request_id() is None
    with bind_request_id(None) as kept:
        assert kept is None


@pytest.mark.parametrize(
    ("given", "kept"),
    [("abc-1", "abc-1"), ("a b\tc", "abc"), ("", None), ("\n\n", None), ("x" * 300, "x" * 128),
     ("é-1", "-1")],
)  # fmt: skip
def test_request_ids_from_callers_are_cleaned(given: str, kept: str | None) -> None:
    assert clean_request_id(given) == kept


@pytest.fixture
def bare_root() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield root
    finally:
        root.handlers = handlers
        root.setLevel(level)


def test_configure_installs_a_json_handler_once(bare_root: logging.Logger) -> None:
    bare_root.handlers = []  # pytest's capture handlers join for the call: none for this one
    out = io.StringIO()
    handler = logs.configure("json", "INFO", stream=out)
    assert handler is not None and bare_root.handlers == [handler]
    assert logs.configure("text", stream=io.StringIO()) is None  # an existing setup wins
    with bind_request_id("r-9"):
        logging.getLogger("edgecloud.x").info("ready", extra={"port": 1})
    logging.getLogger("edgecloud.x").debug("hidden")
    [line] = [json.loads(x) for x in out.getvalue().splitlines()]
    assert (line["message"], line["request_id"], line["port"]) == ("ready", "r-9", 1)
    forced = logs.configure("text", "WARNING", stream=out, force=True)
    assert bare_root.handlers == [forced]


def test_the_command_line_writes_json_lines_when_the_settings_say_so() -> None:
    code = (
        "import logging; from edgecloud.cli._common import load_settings; load_settings(None);"
        "logging.getLogger('edgecloud.cloud').warning('listening on %d', 50051)"
    )
    env = {**os.environ, "EDGECLOUD_LOG_FORMAT": "json", "EDGECLOUD_CONFIG": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True)  # fmt: skip
    [line] = [json.loads(x) for x in out.stderr.splitlines()]
    assert (line["level"], line["logger"], line["message"]) == (
        "WARNING", "edgecloud.cloud", "listening on 50051",
    )  # fmt: skip
