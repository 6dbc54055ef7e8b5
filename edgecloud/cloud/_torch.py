"""The torch backend: a transformers causal LM served with continuous batching.

Loading: a GGUF file (by default the same Gemma 3 270M the devices run) is
dequantized by transformers (needs the ``gguf`` package; about a minute on two
cores) and the result is saved as safetensors under
``<cache_dir>/cloud/<gguf sha256>/``, so later starts load in seconds. Any
Hugging Face model directory loads directly. Nothing is ever fetched from a hub.

Precision (``cloud.model.dtype = "auto"``): bfloat16 on CUDA, and on CPUs that
multiply bfloat16 natively (AVX512-BF16 or AMX); float32 on other CPUs. On the
2-core AVX512-BF16 machine, bfloat16 halves every forward: a decode step of one
row 108 -> 56 ms, of 16 rows 228 -> 73 ms, a 16-prompt prefill 380 -> 167 ms.
CPU decoding reads every weight once per step (the 262k x 640 tied output
matrix is 62% of them), so halving the bytes halves the step. Greedy text
matches float32 for the first tokens and can then differ (the weights are a
4-bit dequantization either way); logprob and entropy are computed in float32.

Why a scheduler of our own instead of transformers' continuous batching
(``generate_batch`` / ``init_continuous_batching``): it measured faster on the same
load (``bench/cloud_batching.py``), and it batches requests for different LoRA
adapters together, which ``generate_batch`` cannot; the measurements are in
``docs/design-notes.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncGenerator, Mapping, Sequence
from pathlib import Path
from typing import Any

from edgecloud.cloud._backend import BackendInfo, CloudRequest, LoadSnapshot
from edgecloud.cloud._grammar import GrammarCompiler, SequenceGrammar
from edgecloud.cloud._prompting import request_text
from edgecloud.cloud._scheduler import Scheduler
from edgecloud.cloud._sequence import Sequence_
from edgecloud.cloud._settings import CloudConfig, CloudSettings
from edgecloud.errors import (
    CloudModelLoadError,
    EdgeCloudError,
    InvalidRequestError,
    UnknownAdapterError,
)
from edgecloud.types import Chunk, Finish, Retraction

__all__ = ["TorchBackend", "converted_model_dir"]

log = logging.getLogger("edgecloud.cloud")


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX-BF16).

    Without it oneDNN emulates bfloat16 and float32 is the faster choice. Only
    Linux reports the flags; elsewhere this says False.
    """
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False


def auto_dtype(cuda: bool) -> str:
    """``cloud.model.dtype = "auto"``: bfloat16 on CUDA and on CPUs with native bfloat16."""
    return "bfloat16" if cuda or cpu_has_native_bf16() else "float32"


def converted_model_dir(cache_dir: Path, sha256: str) -> Path:
    """Where the safetensors conversion of the GGUF with this sha256 is cached."""
    return cache_dir / "cloud" / sha256


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize ``gguf`` into a safetensors model directory at ``target`` (atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("converting %s to safetensors (once; cached in %s)", gguf, target)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The GGUF loader marks the model as quantized although its weights are now
    # plain tensors; without the marker transformers saves it like any model.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_model_dir(settings: CloudSettings) -> tuple[Path, str]:
    from edgecloud.common.files import sha256_file
    from edgecloud.common.models import ensure_default_model

    cfg = settings.cloud.model
    path = cfg.path.expanduser() if cfg.path is not None else None
    if path is not None and path.is_dir():
        return path, path.name
    if path is None:
        path = ensure_default_model(settings.cache_dir)
    if not path.is_file():
        raise CloudModelLoadError(f"cloud model not found: {path}")
    digest = sha256_file(path)
    target = converted_model_dir(settings.cache_dir, digest)
    if not (target / "config.json").is_file():
        _convert_gguf(path, target)
    return target, path.name


class TorchBackend:
    """Serves a transformers model with continuous batching and per-request LoRA.

    A :class:`~edgecloud.cloud.CloudBackend`. Build it with :meth:`load`; call
    :meth:`generate` from an event loop; the model runs in the scheduler thread,
    never on the loop.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        config: CloudConfig,
        *,
        model_name: str,
        adapters: Sequence[str] = (),
    ) -> None:
        import torch

        from edgecloud.cloud._engine import TorchEngine

        self.tokenizer = tokenizer
        self._config = config
        self._adapters = tuple(adapters)
        self._stale: set[str] = set()
        """Adapters unloaded but still in the peft model (it cannot lose its last one)."""
        device = next(model.parameters()).device
        self.info = BackendInfo(
            backend="torch",
            model=model_name,
            adapters=self._adapters,
            device=str(device),
            dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
        )
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        self._eos = frozenset(eos_ids)
        self._bos = tokenizer.bos_token_id
        vocab = getattr(model.get_output_embeddings(), "out_features", None) or len(tokenizer)
        self._grammars = GrammarCompiler(tokenizer, int(vocab), sorted(self._eos))
        pad = tokenizer.pad_token_id
        self.engine = TorchEngine(
            model,
            pad_id=pad if pad is not None else 0,
            device=device,
            use_adapters=bool(self._adapters),
        )
        self._scheduler = Scheduler(
            self.engine,
            max_running=config.max_running_sequences,
            max_queued=config.max_queued_requests,
            admission_window_s=config.admission_window_ms / 1000,
            admission_gap_s=config.admission_gap_ms / 1000,
        )
        self._torch = torch

    @classmethod
    def load(cls, settings: CloudSettings) -> TorchBackend:
        """Load the configured model (the embedded default GGUF when none) and its adapters.

        Raises:
            CloudModelLoadError: the model or an adapter could not be loaded.
            ModelNotFoundError: the default model packages are not installed.
        """
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        cfg = settings.cloud.model
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise CloudModelLoadError(
                "the cloud backend needs torch and transformers: pip install 'edgecloud[cloud]'"
            ) from exc
        if cfg.threads is not None:
            # Process-wide; threads started later (the scheduler's) inherit it.
            torch.set_num_threads(cfg.threads)
        want_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise CloudModelLoadError("cloud.model.device is 'cuda' but no CUDA device is present")
        device = torch.device("cuda" if want_cuda else "cpu")
        dtype_name = cfg.dtype if cfg.dtype != "auto" else auto_dtype(want_cuda)
        try:
            model_dir, name = resolve_model_dir(settings)
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
            model: Any = AutoModelForCausalLM.from_pretrained(
                str(model_dir), dtype=getattr(torch, dtype_name)
            )
            model.to(device)
        except EdgeCloudError:
            raise
        except (OSError, ValueError, RuntimeError) as exc:
            raise CloudModelLoadError(f"cannot load the cloud model: {exc}") from exc
        model.eval()
        model = _attach_adapters(model, cfg.adapters)
        return cls(model, tokenizer, settings.cloud, model_name=name, adapters=list(cfg.adapters))

    def load_snapshot(self) -> LoadSnapshot:
        """Sequences in the batch and in the queue now, and the limits of both."""
        return self._scheduler.load()

    def prompt_text(self, request: CloudRequest) -> str:
        """The prompt as the model sees it, before the assistant prefix: chat rendered
        with the plain template, retrieved passages put in by ``prompt_format``."""
        return request_text(self._config.model.prompt_format, request)

    def encode(self, request: CloudRequest) -> tuple[list[int], int]:
        """Token ids of the prompt and then of the assistant prefix, and how many of
        them are the prefix's.

        The two are tokenized apart: where the device handed off was a token
        boundary of its answer, and tokenizing across the seam could merge the
        prompt's last characters with the prefix's first into a token the
        answer never had.

        Raises:
            InvalidRequestError: the prompt (with the prefix) leaves no room for new tokens.
        """
        ids: list[int] = self.tokenizer(self.prompt_text(request), add_special_tokens=False)[
            "input_ids"
        ]
        prefix: list[int] = []
        if request.assistant_prefix:
            prefix = self.tokenizer(request.assistant_prefix, add_special_tokens=False)["input_ids"]
        if self._bos is not None:
            ids = [self._bos, *ids]
        limit = self._config.max_context_tokens
        if len(ids) + len(prefix) + 1 > limit:
            what = f"prompt has {len(ids)} tokens"
            if prefix:
                what += f" and the assistant prefix {len(prefix)}"
            raise InvalidRequestError(f"{what}; the service allows {limit} with the answer")
        return ids + prefix, len(prefix)

    def _grammar(self, schema: str, prefix: Sequence[int], walk: bool) -> SequenceGrammar:
        """A matcher for ``schema``; with ``walk``, advanced over the (unverified)
        assistant prefix. A verified prefix is walked by the engine, which masks each
        of its positions on the way.

        Raises:
            InvalidRequestError: the schema cannot be compiled, or the prefix leaves it.
        """
        grammar = self._grammars.matcher(self._grammars.compile(schema))
        taken = grammar.advance(prefix) if walk else len(prefix)
        # Whitespace after a complete value (the device's grammar allows a space
        # there, xgrammar does not) changes nothing: the answer can only end.
        if taken < len(prefix) and self._decode(prefix[taken:]).strip():
            raise InvalidRequestError("the assistant prefix does not follow the JSON schema")
        return grammar

    def _decode(self, ids: Sequence[int]) -> str:
        text: str = self.tokenizer.decode(ids, skip_special_tokens=True)
        return text

    async def generate(
        self, request: CloudRequest
    ) -> AsyncGenerator[Chunk | Finish | Retraction, None]:
        """Stream chunks, then one :class:`Finish` (see :meth:`CloudBackend.generate`).

        Closing the iterator (or cancelling the consuming task) frees the batch
        slot before the next decode step. ``max_tokens`` is capped by the room
        left in ``cloud.max_context_tokens``; the service checks it against
        ``cloud.max_new_tokens`` before it gets here.

        With ``verify_prefix`` the prefix is judged in the prefill the continuation
        needs anyway (see :mod:`edgecloud.cloud._engine`); a :class:`Retraction`
        comes first when part of it is rejected. ``Finish.prompt_tokens`` counts
        every token prefilled, the whole prefix included.

        With ``params.json_schema`` every token is picked under the schema's grammar
        (:mod:`edgecloud.cloud._grammar`), after the assistant prefix when there is one.

        Raises:
            InvalidRequestError: the prompt leaves no room for new tokens, or the schema
                cannot be compiled (or the prefix does not follow it).
            UnknownAdapterError: ``adapter_id`` is not loaded.
            OverloadedError: the batch and queue are full.
        """
        params = request.params
        if request.adapter_id and request.adapter_id not in self._adapters:
            raise UnknownAdapterError(f"adapter {request.adapter_id!r} is not loaded")
        prompt_ids, prefix_tokens = self.encode(request)
        grammar = None
        if params.json_schema:
            grammar = await asyncio.to_thread(
                self._grammar, params.json_schema, prompt_ids[len(prompt_ids) - prefix_tokens :],
                not request.verify_prefix,
            )  # fmt: skip
        room = self._config.max_context_tokens - len(prompt_ids)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Chunk | Finish | Retraction | BaseException] = asyncio.Queue()

        def emit(event: Chunk | Finish | Retraction | BaseException) -> None:
            # RuntimeError: the loop closed under a cancelled stream; nobody listens.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(queue.put_nowait, event)

        seq = Sequence_(
            request_id=request.request_id,
            prompt_ids=prompt_ids,
            params=params,
            adapter_id=request.adapter_id or None,
            emit=emit,
            decode=self._decode,
            eos_ids=self._eos,
            max_new_tokens=min(params.max_tokens, room),
            deadline=request.deadline,
            verify_tokens=prefix_tokens if request.verify_prefix else 0,
            prefix_text=request.assistant_prefix,
            prefix_logprobs=request.prefix_logprobs,
            grammar=grammar,
        )
        self._scheduler.submit(seq)
        try:
            while True:
                event = await queue.get()
                if isinstance(event, BaseException):
                    raise event
                yield event
                if isinstance(event, Finish):
                    return
        finally:
            if not seq.finished:
                seq.cancelled = True
                self._scheduler.wake()

    async def add_adapter(self, adapter_id: str, path: Path) -> None:
        """Load the peft adapter at ``path`` as ``adapter_id`` while requests keep running.

        The load runs on the scheduler thread between two steps (a forward never sees a
        half-loaded adapter); the first adapter wraps the model in a peft ``PeftModel``.

        Raises:
            CloudModelLoadError: the adapter cannot be loaded.
        """

        def load() -> None:
            model = self.engine.model
            if hasattr(model, "load_adapter") and hasattr(model, "peft_config"):
                if adapter_id not in model.peft_config:
                    _load_one(model, adapter_id, path)
                for stale in self._stale - {adapter_id}:
                    _delete_adapter(model, stale)
                self._stale.clear()
            else:
                self.engine.use_adapters(_attach_adapters(model, {adapter_id: path}))

        await asyncio.wrap_future(self._scheduler.call(load))
        if adapter_id not in self._adapters:
            self._adapters = (*self._adapters, adapter_id)
            self.info = dataclasses.replace(self.info, adapters=self._adapters)

    async def remove_adapter(self, adapter_id: str, *, poll_s: float = 0.2) -> None:
        """Unload ``adapter_id`` once no running or waiting request uses it (new requests
        for it fail as unknown from now on)."""
        self._adapters = tuple(a for a in self._adapters if a != adapter_id)
        self.info = dataclasses.replace(self.info, adapters=self._adapters)

        def unload() -> bool:
            if adapter_id in self._adapters:
                return True  # loaded again meanwhile: it stays
            if self._scheduler.uses_adapter(adapter_id):
                return False
            model = self.engine.model
            loaded = getattr(model, "peft_config", {})
            if adapter_id in loaded:
                if len(loaded) == 1:
                    # peft cannot be left without an adapter; the next load drops it
                    self._stale.add(adapter_id)
                else:
                    _delete_adapter(model, adapter_id)
            return True

        while not await asyncio.wrap_future(self._scheduler.call(unload)):
            await asyncio.sleep(poll_s)

    def close(self) -> None:
        """Stop the scheduler thread (waits up to 30 s for the step it is in)."""
        self._scheduler.close(timeout=30)

    async def aclose(self) -> None:
        """:meth:`close` from an event loop, without blocking it."""
        await asyncio.to_thread(self.close)


def _attach_adapters(model: Any, adapters: Mapping[str, Path]) -> Any:
    if not adapters:
        return model
    try:
        from peft import PeftModel
    except ImportError as exc:
        raise CloudModelLoadError(
            "LoRA adapters need peft: pip install 'edgecloud[cloud]'"
        ) from exc
    items = list(adapters.items())
    try:
        first_id, first_path = items[0]
        model = PeftModel.from_pretrained(model, str(first_path), adapter_name=first_id)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise CloudModelLoadError(f"cannot load LoRA adapter: {exc}") from exc
    for adapter_id, path in items[1:]:
        _load_one(model, adapter_id, path)
    model.eval()
    return model


def _delete_adapter(model: Any, adapter_id: str) -> None:
    """Delete one of several adapters of a peft model, another one made active first (the
    PeftModel would keep naming the deleted one, and every forward would then fail)."""
    if model.active_adapter == adapter_id:
        model.set_adapter(next(a for a in model.peft_config if a != adapter_id))
    model.delete_adapter(adapter_id)


def _load_one(model: Any, adapter_id: str, path: Path) -> None:
    """Add one more adapter to a peft model.

    Raises:
        CloudModelLoadError: the adapter cannot be loaded.
    """
    try:
        model.load_adapter(str(path), adapter_name=adapter_id)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise CloudModelLoadError(f"cannot load LoRA adapter: {exc}") from exc
    model.eval()
