"""llama.cpp backend: the one module that knows llama-cpp-python's bindings.

It drives llama.cpp's C API (through llama-cpp-python's ctypes layer) with its
own decode loop instead of ``Llama.create_completion``: per step it reads the
last position's logits in place (no all-position logits are kept), derives the
chosen token's log-probability and the entropy with one vectorized pass
(:mod:`edgecloud.backends._signals`), and picks the token by argmax (greedy) or
with llama.cpp's native sampler chain (top-k, top-p, temperature, seeded dist).

With ``SamplingParams.json_schema`` a llama.cpp grammar keeps every token on the
schema (:mod:`edgecloud.backends._grammar`); the confidence signals still describe
the model's full distribution, as without a schema (docs/structured-output.md).

LoRA adapters (llama.cpp LoRA GGUFs, see :mod:`edgecloud.adapters._gguf`) are
hot-swapped on the live context with :meth:`LlamaCppBackend.set_adapter`: the
base weights stay loaded, only the small A/B matrices are read.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import math
import random
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgecloud.backends._base import BackendInfo, FifoLock, TextBackend
from edgecloud.backends._grammar import FullMask, Grammar, schema_to_gbnf
from edgecloud.backends._signals import StepSignals
from edgecloud.common.chat import ChatFormatter, RenderedPrompt
from edgecloud.common.models import check_model_file
from edgecloud.common.text import StopMatcher, Utf8Stream
from edgecloud.errors import (
    AdapterFormatError,
    BackendClosedError,
    ConfigError,
    ContextOverflowError,
    DeviceError,
    InvalidRequestError,
    ModelIntegrityError,
    ModelLoadError,
)
from edgecloud.types import ChatMessage, Chunk, Finish, FinishReason, SamplingParams

__all__ = ["LlamaCppBackend"]

log = logging.getLogger("edgecloud.native.llama_cpp")
# ggml log levels (ggml.h): 1 debug, 2 info, 3 warn, 4 error, 5 continuation.
_LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}

_init_lock = threading.Lock()
_native: Any = None
_recent_log: collections.deque[str] = collections.deque(maxlen=20)
_log_callback: Any = None
_BENIGN = ("cannot use buft",)
"""llama.cpp warnings that say nothing is wrong, logged at DEBUG: a LoRA swap reports
each tensor it keeps in the plain CPU buffer (one line per tensor, 50+ per adapter)."""


def _bindings() -> Any:
    """Import llama_cpp once, initialise the backend and route its log to ``logging``."""
    global _native, _log_callback
    with _init_lock:
        if _native is None:
            try:
                import llama_cpp
            except ImportError as exc:  # pragma: no cover - depends on the install
                raise DeviceError(
                    "llama-cpp-python is not installed: pip install 'edgecloud[device]'"
                ) from exc
            llama_cpp.llama_backend_init()

            @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
            def _on_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
                msg = text.decode("utf-8", "replace").rstrip()
                if not msg:
                    return
                py_level = _LEVELS.get(level, logging.DEBUG)
                if py_level >= logging.WARNING and any(b in msg for b in _BENIGN):
                    py_level = logging.DEBUG
                if py_level >= logging.WARNING:
                    _recent_log.append(msg)
                log.log(py_level, "%s", msg)

            _log_callback = _on_log  # keep a reference: llama.cpp holds a raw pointer
            llama_cpp.llama_log_set(_on_log, ctypes.c_void_p(0))
            _native = llama_cpp
    return _native


class LlamaCppBackend(TextBackend):
    """A GGUF model on the device, streaming tokens with confidence signals.

    Thread safety: one model and one context serve all callers, one generation at
    a time. Concurrent ``stream`` calls are **serialized in arrival order** (a FIFO
    lock held from the first token to the last); a caller still waiting can cancel.
    Tokenization runs outside the lock.

    The KV cache of the previous request is reused for the longest common token
    prefix, so a repeated system prompt or few-shot header is not recomputed.

    Args:
        path: GGUF file.
        n_ctx: context window in tokens (llama.cpp may round it up; see ``n_ctx``).
        n_batch: prompt tokens per decode call.
        n_threads: CPU threads.
        chat_template: ``"auto"``, ``"plain"`` or Jinja2 source (see
            :class:`edgecloud.config.LocalModelConfig`).
        sha256: when set, the file's hash is checked before loading.
        flash_attn: ``"auto"``, ``"on"`` or ``"off"``.

    Raises:
        ModelNotFoundError, ModelIntegrityError, ModelLoadError: the file is missing,
            not a GGUF, corrupt or truncated, or llama.cpp cannot load it.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        n_ctx: int = 2048,
        n_batch: int = 512,
        n_threads: int = 2,
        chat_template: str = "auto",
        sha256: str | None = None,
        flash_attn: str = "auto",
    ) -> None:
        self._path = check_model_file(Path(path), sha256=sha256)
        ll = _bindings()
        self._ll = ll
        self._model: Any = None
        self._ctx: Any = None
        self._lock = FifoLock()
        self._native = threading.Lock()  # held around every native call on the context
        self._closed = False

        mparams = ll.llama_model_default_params()
        _recent_log.clear()
        model = ll.llama_model_load_from_file(str(self._path).encode(), mparams)
        if not model:
            raise ModelIntegrityError(
                f"llama.cpp could not load {self._path}: {_last_native_error()}"
            )
        self._model = model
        self._vocab = ll.llama_model_get_vocab(model)
        self._n_vocab = int(ll.llama_vocab_n_tokens(self._vocab))

        cparams = ll.llama_context_default_params()
        n_batch = min(n_batch, n_ctx)  # llama.cpp aborts on a batch larger than the context
        cparams.n_ctx = n_ctx
        cparams.n_batch = n_batch
        cparams.n_ubatch = min(n_batch, 512)
        cparams.n_threads = n_threads
        cparams.n_threads_batch = n_threads
        cparams.no_perf = True
        cparams.flash_attn_type = {"auto": -1, "off": 0, "on": 1}[flash_attn]
        ctx = ll.llama_init_from_model(model, cparams)
        if not ctx:
            ll.llama_model_free(model)
            self._model = None
            raise ModelLoadError(
                f"llama.cpp could not create a context of {n_ctx} tokens for {self._path}: "
                f"{_last_native_error()}"
            )
        self._ctx = ctx
        # The attached adapter's native handle (0 or 1 entries), shared with the
        # finalizer so it is freed before the model even if close() is never called.
        self._adapter_handles: list[Any] = []
        self._adapter_path: Path | None = None
        self._adapter_scale = 0.0
        self._adapter_on = False  # whether the loaded adapter is attached to the context
        self._finalizer = weakref.finalize(
            self, _free_native, ll, ctx, model, self._adapter_handles
        )
        self._mem = ll.llama_get_memory(ctx)
        self._n_ctx = int(ll.llama_n_ctx(ctx))
        self._n_batch = n_batch
        self._add_bos = bool(ll.llama_vocab_get_add_bos(self._vocab))
        self._cached: list[int] = []
        self._pieces: dict[int, bytes] = {}
        self._signals = StepSignals(self._n_vocab)
        self._piece_buf = ctypes.create_string_buffer(256)
        self._step_token = (ll.llama_token * 1)()
        self._full_mask: FullMask | None = None  # built on the first constrained request

        self._bos_text = self._token_text(ll.llama_vocab_bos(self._vocab))
        eos_text = self._token_text(ll.llama_vocab_eos(self._vocab))
        own_template = self.metadata("tokenizer.chat_template")
        if chat_template == "auto":
            chat_template = own_template or "plain"
        self._template_source = (
            "model"
            if own_template and chat_template == own_template
            else "plain"
            if chat_template == "plain"
            else "config"
        )
        try:
            self._formatter = ChatFormatter(
                chat_template, bos_token=self._bos_text, eos_token=eos_text
            )
        except ConfigError:
            self.close()
            raise
        self._info = BackendInfo(
            kind="llama.cpp",
            model=self._path.stem,
            path=str(self._path),
            details={
                "n_ctx": self._n_ctx,
                "n_vocab": self._n_vocab,
                "n_params": int(ll.llama_model_n_params(model)),
                "size_bytes": int(ll.llama_model_size(model)),
                "n_threads": n_threads,
                "chat_template": self._template_source,
            },
        )

    @property
    def info(self) -> BackendInfo:
        return self._info

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    def metadata(self, key: str) -> str | None:
        """A GGUF metadata value as text, or None when the key is absent."""
        self._check_open()
        size = 4096
        while True:
            buf = ctypes.create_string_buffer(size)
            n = self._ll.llama_model_meta_val_str(self._model, key.encode(), buf, size)
            if n < 0:
                return None
            if n < size:
                return buf.value.decode("utf-8", "replace")
            size = n + 1

    @property
    def adapter(self) -> Path | None:
        """The LoRA GGUF applied to generations now, or None for the base model."""
        return self._adapter_path

    @property
    def adapter_scale(self) -> float:
        """The scale the active adapter was attached with (0.0 without one)."""
        return self._adapter_scale

    def set_adapter(self, path: Path | None, *, scale: float = 1.0) -> float:
        """Hot-swap the LoRA adapter applied to the model; None returns to the base model.

        The file is checked (a llama.cpp LoRA GGUF for this model's architecture) and
        loaded while generations go on; the switch itself waits for the generation in
        progress, if any, and applies from the next request, which starts with an
        empty KV cache (cached keys and values were computed under the old weights).
        The previous adapter's memory is freed.

        Args:
            path: a LoRA GGUF, or None to detach.
            scale: multiplies the adapter's ``alpha / rank`` (1.0 = as trained).

        Returns:
            Seconds taken, including the wait for a running generation.

        Raises:
            AdapterFormatError: the file is not a LoRA GGUF, or llama.cpp rejects it
                (for example a tensor the base model does not have, or wrong shapes).
            AdapterMismatchError: the adapter is for another architecture.
            BackendClosedError: the backend is closed.
            InvalidRequestError: ``scale`` is not finite.
        """
        from edgecloud.adapters._gguf import read_lora_gguf

        start = time.perf_counter()
        self._check_open()
        if not math.isfinite(scale):
            raise InvalidRequestError(f"adapter scale must be a finite number, not {scale}")
        ll = self._ll
        handle: Any = None
        if path is not None:
            path = Path(path)
            info = read_lora_gguf(path)
            info.check_architecture(self.metadata("general.architecture") or "")
            with self._native:  # a close() must not free the model under the load
                self._check_open()
                _recent_log.clear()
                handle = ll.llama_adapter_lora_init(self._model, str(path).encode())
            if not handle:
                raise AdapterFormatError(
                    f"llama.cpp could not load the adapter {path}: {_last_native_error()}"
                )
        self._lock.acquire()
        try:
            with self._native:
                if self._closed:
                    # close() freed the model, and with it every adapter still loaded.
                    raise BackendClosedError("this LlamaCppBackend has been closed")
                try:
                    self._attach(handle, scale)
                except BaseException:
                    if handle:
                        ll.llama_adapter_lora_free(handle)
                    raise
                self._reset_cache()
                for old in self._adapter_handles:
                    ll.llama_adapter_lora_free(old)
                self._adapter_handles[:] = [handle] if handle else []
                self._adapter_path = path
                self._adapter_scale = scale if handle else 0.0
                self._adapter_on = bool(handle)
        finally:
            self._lock.release()
        return time.perf_counter() - start

    def _attach(self, handle: Any, scale: float) -> None:
        """Make ``handle`` (a ``llama_adapter_lora_init`` result, or None) the context's
        only adapter. The one place that builds the native adapter array: llama.cpp
        takes ``llama_adapter_lora **`` and dereferences every entry while building
        the graph, so anything but the handle object itself (a ``byref``, an address
        as int, a freed handle) crashes the process (SIGFPE/SIGSEGV), not a Python
        exception."""
        ll = self._ll
        if handle:
            adapters = (ll.llama_adapter_lora_p_ctypes * 1)(handle)
            scales = (ctypes.c_float * 1)(scale)
            rc = ll.llama_set_adapters_lora(self._ctx, adapters, 1, scales)
        else:
            rc = ll.llama_set_adapters_lora(self._ctx, None, 0, None)
        if rc != 0:
            raise DeviceError(f"llama_set_adapters_lora failed with code {rc}")

    def tokenize(self, text: str, *, add_bos: bool = True, special: bool = False) -> list[int]:
        """Token ids of ``text`` (thread-safe; needs no lock)."""
        self._check_open()
        data = text.encode("utf-8")
        cap = len(data) + 8
        while True:
            arr = (self._ll.llama_token * cap)()
            n = self._ll.llama_tokenize(
                self._vocab, data, len(data), arr, cap, add_bos and self._add_bos, special
            )
            if n >= 0:
                return list(arr[:n])
            cap = -n

    def render(self, prompt: str | Sequence[ChatMessage]) -> RenderedPrompt:
        """The exact text fed to the model: raw prompts as is, messages through the template."""
        if isinstance(prompt, str):
            return RenderedPrompt(prompt, (), special=False)
        return self._formatter.render(prompt)

    def _prompt_tokens(
        self, prompt: str | Sequence[ChatMessage], prefix: str = ""
    ) -> tuple[list[int], RenderedPrompt]:
        self._check_open()
        rendered = self.render(prompt)
        bos = self._bos_text
        add_bos = not (rendered.special and bos and rendered.text.startswith(bos))
        tokens = self.tokenize(rendered.text + prefix, add_bos=add_bos, special=rendered.special)
        return tokens, rendered

    def count_tokens(self, prompt: str | Sequence[ChatMessage]) -> int:
        return len(self._prompt_tokens(prompt)[0])

    def stream(
        self,
        prompt: str | Sequence[ChatMessage],
        params: SamplingParams,
        cancel: threading.Event | None = None,
        *,
        prefix: str = "",
        use_adapter: bool = True,
    ) -> Iterator[Chunk | Finish]:
        """Stream the answer to ``prompt``; see :meth:`TextBackend.stream`.

        ``use_adapter=False`` answers this request with the base model while an
        adapter stays loaded (an adapter scope's out-of-scope requests): detaching
        and attaching take microseconds, but each change empties the KV cache.
        """
        tokens, rendered = self._prompt_tokens(prompt, prefix)
        if not tokens:
            raise InvalidRequestError("the prompt is empty after tokenization")
        if len(tokens) >= self._n_ctx:
            raise ContextOverflowError(
                f"prompt is {len(tokens)} tokens but the model context holds {self._n_ctx} "
                "(shorten the prompt or raise device.model.n_ctx)",
                prompt_tokens=len(tokens),
                context_tokens=self._n_ctx,
            )
        if params.max_tokens > self._n_ctx:
            raise InvalidRequestError(
                f"max_tokens={params.max_tokens} exceeds the model context of {self._n_ctx} tokens"
            )
        grammar = self._grammar(params.json_schema, prefix) if params.json_schema else None
        stops = tuple(params.stop) + rendered.stop
        return self._generate(
            tokens, params, stops, cancel or threading.Event(), use_adapter, grammar
        )

    def check_schema(self, schema: str) -> None:
        """Refuse a schema llama.cpp's grammar cannot express (see
        :meth:`TextBackend.check_schema`)."""
        self._grammar(schema, "").close()

    def _grammar(self, schema: str, prefix: str) -> Grammar:
        """The schema's grammar, advanced over ``prefix`` (text the answer already has).

        Raises:
            InvalidRequestError: the schema cannot be compiled, or ``prefix`` leaves it.
        """
        self._check_open()
        grammar = Grammar(self._ll, self._vocab, schema_to_gbnf(schema))
        for token in self.tokenize(prefix, add_bos=False) if prefix else ():
            if not grammar.allows(token):
                grammar.close()
                raise InvalidRequestError("the answer's prefix does not follow the JSON schema")
            grammar.accept(token)
        return grammar

    def _generate(
        self,
        prompt: list[int],
        params: SamplingParams,
        stops: tuple[str, ...],
        cancel: threading.Event,
        use_adapter: bool = True,
        grammar: Grammar | None = None,
    ) -> Iterator[Chunk | Finish]:
        if not self._lock.acquire(cancel):
            if grammar is not None:
                grammar.close()
            yield Finish("cancelled", len(prompt), 0)
            return
        sampler = None
        try:
            ll = self._ll
            with self._native:
                self._check_open()
                want = bool(use_adapter and self._adapter_handles)
                if want != self._adapter_on:
                    self._attach(self._adapter_handles[0] if want else None, self._adapter_scale)
                    self._adapter_on = want
                    self._reset_cache()  # the cached keys and values were computed otherwise
                self._prefill(prompt)
                sampler = self._make_sampler(params)
                if grammar is not None and self._full_mask is None:
                    self._full_mask = FullMask(ll, self._n_vocab)
            full = self._full_mask
            ctx, vocab, native = self._ctx, self._vocab, self._native
            budget = min(params.max_tokens, self._n_ctx - len(prompt))
            signals, n_vocab, step = self._signals, self._n_vocab, self._step_token
            utf8, stopper = Utf8Stream(), StopMatcher(stops)
            as_array, get_logits = np.ctypeslib.as_array, ll.llama_get_logits_ith
            is_eog, decode, batch_one = (
                ll.llama_vocab_is_eog,
                ll.llama_decode,
                ll.llama_batch_get_one,
            )
            want_top = params.top_logprobs > 0
            reason: FinishReason = "length"
            n = 0
            while n < budget and not cancel.is_set():
                with native:  # released while the caller holds the chunk
                    self._check_open()
                    if n:
                        rc = decode(ctx, batch_one(step, 1))
                        if rc != 0:
                            self._reset_cache()
                            if rc == 1:  # no KV slot left: the context is full
                                break
                            raise DeviceError(f"llama_decode failed with code {rc}")
                        self._cached.append(step[0])
                    logits = as_array(get_logits(ctx, -1), shape=(n_vocab,))
                    if sampler is None:
                        token = int(logits.argmax())
                        top = float(logits[token])
                    else:
                        top = float(logits.max())
                        token = int(ll.llama_sampler_sample(sampler, ctx, -1))
                    if grammar is not None:
                        assert full is not None
                        allowed = (
                            grammar.best(logits, token, full)
                            if sampler is None
                            else grammar.sample(logits, token, sampler, full)
                        )
                        if allowed is None:  # the grammar cannot go on: end the answer
                            reason = "stop"
                            break
                        token = allowed
                    # From the unmasked logits: the model's own distribution (the docs say why).
                    logprob, entropy = signals(logits, token, top)
                if is_eog(vocab, token):
                    reason = "stop"
                    break
                if grammar is not None:
                    grammar.accept(token)
                alternatives = self._alternatives(params.top_logprobs) if want_top else ()
                step[0] = token
                piece = self._piece(token)
                text = stopper.feed(utf8.feed(piece))
                yield Chunk(
                    text, token, logprob, entropy, "local", n, piece=piece, top=alternatives
                )
                n += 1
                if stopper.stopped:
                    reason = "stop"
                    break
            else:
                if cancel.is_set():
                    reason = "cancelled"
            if reason != "stop":
                tail = stopper.feed(utf8.flush()) + stopper.flush()
                if tail:
                    yield Chunk(tail, -1, 0.0, 0.0, "local", n)
            yield Finish(reason, len(prompt), n)
        finally:
            if sampler is not None:
                ll.llama_sampler_free(sampler)
            if grammar is not None:
                grammar.close()
            self._lock.release()

    def _prefill(self, prompt: list[int]) -> None:
        """Evaluate the prompt, reusing the KV cache for the common prefix."""
        ll = self._ll
        keep = 0
        for a, b in zip(self._cached, prompt, strict=False):
            if a != b:
                break
            keep += 1
        keep = min(keep, len(prompt) - 1)  # the last prompt token must be decoded for logits
        if keep < len(self._cached) and not ll.llama_memory_seq_rm(self._mem, -1, keep, -1):
            ll.llama_memory_clear(self._mem, True)
            keep = 0
        del self._cached[keep:]
        for i in range(keep, len(prompt), self._n_batch):
            part = prompt[i : i + self._n_batch]
            arr = (ll.llama_token * len(part))(*part)
            rc = ll.llama_decode(self._ctx, ll.llama_batch_get_one(arr, len(part)))
            if rc != 0:
                self._reset_cache()
                raise DeviceError(f"llama_decode failed on the prompt with code {rc}")
            self._cached.extend(part)

    def _reset_cache(self) -> None:
        self._cached.clear()
        self._ll.llama_memory_clear(self._mem, True)

    def _make_sampler(self, params: SamplingParams) -> Any:
        if params.temperature == 0.0:
            return None
        ll = self._ll
        chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        if params.top_k > 0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_k(params.top_k))
        if params.top_p < 1.0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_p(params.top_p, 1))
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_temp(params.temperature))
        seed = params.seed if params.seed is not None else random.getrandbits(32)
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_dist(seed))
        return chain

    def _alternatives(self, k: int) -> tuple[tuple[str, float], ...]:
        """The step's ``k`` most likely tokens as (text, logprob) for ``Chunk.top``; a piece
        that is part of a multi-byte character reads with U+FFFD for its bytes."""
        return tuple(
            (self._piece(t).decode("utf-8", "replace"), lp) for t, lp in self._signals.top(k)
        )

    def _piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            buf = self._piece_buf
            n = self._ll.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = self._ll.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            piece = buf.raw[:n]
            self._pieces[token] = piece
        return piece

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        text = self._ll.llama_vocab_get_text(self._vocab, token)
        return text.decode("utf-8", "replace") if text else ""

    def _check_open(self) -> None:
        if self._closed:
            raise BackendClosedError("this LlamaCppBackend has been closed")

    def close(self) -> None:
        """Free the context, the adapter and the model. Waits for the decode step in
        progress, if any; a stream still open afterwards raises BackendClosedError on
        its next step."""
        with self._native:
            self._closed = True
            self._finalizer()


def _free_native(ll: Any, ctx: Any, model: Any, adapters: list[Any]) -> None:
    # The context points at its adapters, adapters at their model: free in that order.
    if ctx:
        ll.llama_free(ctx)
    for handle in adapters:
        ll.llama_adapter_lora_free(handle)
    adapters.clear()
    if model:
        ll.llama_model_free(model)


def _last_native_error() -> str:
    return _recent_log[-1] if _recent_log else "no detail from llama.cpp"
