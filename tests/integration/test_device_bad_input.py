"""Bad input on the real runtime: each case gets a clear error from the tree and the
process keeps serving (a crash here would take pytest down with it)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from edgecloud import Client
from edgecloud.backends import LlamaCppBackend
from edgecloud.common.files import sha256_file
from edgecloud.config import Settings
from edgecloud.device import ensure_default_model, load_text_backend
from edgecloud.errors import (
    ConfigError,
    ContextOverflowError,
    InvalidRequestError,
    ModelIntegrityError,
    ModelNotFoundError,
)

pytestmark = pytest.mark.model

QA = "Q: What is the capital of France?\nA:"


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"nope\.gguf"):
        LlamaCppBackend(tmp_path / "nope.gguf")


def test_not_a_gguf(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(os.urandom(4096))
    with pytest.raises(ModelIntegrityError, match="not a GGUF"):
        LlamaCppBackend(bogus)


@pytest.mark.parametrize("keep", [64, 2 << 20, 50 << 20])
def test_truncated_gguf_is_reported_with_llama_cpp_reason(
    default_gguf: Path, tmp_path: Path, keep: int
) -> None:
    cut = tmp_path / "cut.gguf"
    with default_gguf.open("rb") as src, cut.open("wb") as dst:
        dst.write(src.read(keep))
    with pytest.raises(ModelIntegrityError, match=r"llama\.cpp could not load .*cut\.gguf: .+"):
        LlamaCppBackend(cut)


def test_wrong_sha256_is_refused_before_loading(default_gguf: Path) -> None:
    with pytest.raises(ModelIntegrityError, match="expected 0000"):
        LlamaCppBackend(default_gguf, sha256="0" * 64)


def test_corrupt_cached_default_model_is_rebuilt(default_gguf: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    target = cache / "models" / default_gguf.name
    target.parent.mkdir(parents=True)
    shutil.copyfile(default_gguf, target)
    with target.open("r+b") as fh:  # flip bytes in the middle, keep the size
        fh.seek(100 << 20)
        fh.write(b"\x00" * 16)
    good = sha256_file(default_gguf)
    assert sha256_file(target) != good
    assert ensure_default_model(cache) == target
    assert sha256_file(target) == good
    assert not list(target.parent.glob("*.part"))  # no temp file left behind


def test_prompt_longer_than_context(default_gguf: Path) -> None:
    with LlamaCppBackend(default_gguf, n_ctx=64, n_threads=2) as small:
        n_ctx = small.n_ctx  # llama.cpp rounds the context up (to 256 here)
        client = Client(small)
        with pytest.raises(
            ContextOverflowError, match=rf"prompt is \d+ tokens .* holds {n_ctx}"
        ) as e:
            client.generate("word " * (2 * n_ctx))
        assert e.value.prompt_tokens > n_ctx
        # the prompt fits but prompt + max_tokens does not: generation stops at the context
        prompt = "word " * (n_ctx - 20)
        r = client.generate(prompt, max_tokens=n_ctx - 1)
        assert r.finish_reason == "length"
        assert r.usage.prompt_tokens + r.usage.completion_tokens == n_ctx


@pytest.mark.parametrize("max_tokens", [-1, 0, 5000, 10**9])
def test_negative_or_absurd_max_tokens(backend: LlamaCppBackend, max_tokens: int) -> None:
    with pytest.raises(InvalidRequestError, match="max_tokens"):
        Client(backend).generate(QA, max_tokens=max_tokens)


@pytest.mark.parametrize(
    "prompt", ["caf\udce9", b"caf\xe9 \xff", [{"role": "user", "content": "\ud83d"}]]
)
def test_invalid_utf8(backend: LlamaCppBackend, prompt: object) -> None:
    with pytest.raises(InvalidRequestError, match="UTF-8"):
        Client(backend).generate(prompt)  # type: ignore[arg-type]
    assert Client(backend).generate(QA, max_tokens=2).usage.completion_tokens == 2


def test_unknown_and_out_of_range_model_settings(model_cache: Path) -> None:
    settings = Settings.load(cache_dir=model_cache)
    with pytest.raises(ConfigError, match="n_ctxx"):
        load_text_backend(settings, n_ctxx=100)
    with pytest.raises(ConfigError, match="n_threads"):
        load_text_backend(settings, n_threads=0)
    with pytest.raises(ConfigError, match="flash_attn"):
        load_text_backend(settings, flash_attn="maybe")


def test_closed_backend_raises_clearly(default_gguf: Path) -> None:
    from edgecloud.errors import BackendClosedError

    b = LlamaCppBackend(default_gguf, n_ctx=128, n_threads=2)
    client = Client(b)
    stream = client.stream(QA, max_tokens=20)
    next(stream)
    b.close()
    with pytest.raises(BackendClosedError):
        list(stream)
    with pytest.raises(BackendClosedError):
        client.generate(QA)
