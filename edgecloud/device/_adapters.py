"""The device's adapter manager: verify, install atomically, hot-swap, canary, roll back.

For every version the cloud offers (``edgecloud.v1.AdapterSync``) the manager

1. checks the manifest's Ed25519 signature against ``device.adapters.public_keys``,
   then that it was trained for this base model (sha256 and architecture);
2. downloads ``adapter.gguf`` (resumable; the sha256 and size must match the manifest);
3. installs it into ``<root>/<adapter_id>/<version>/``: a temporary directory,
   fsynced, renamed into place in one step;
4. hot-swaps it into the backend (the base model stays loaded);
5. runs the canary prompts; below ``canary_min_pass`` it swaps back to the previous
   good version (or the base model), marks the version bad so it is not retried,
   and reports ``canary_failed``;
6. records the version as the last good one in ``current.json`` (written
   atomically) and reports ``running``.

A crash at any point leaves the last good version in ``current.json``: the next
:meth:`AdapterManager.start` restores it, after checking its signature and hash
again, and removes half-installed temporary directories.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgecloud.adapters._manifest import (
    DEVICE_FILE,
    AdapterCalibration,
    AdapterRouting,
    CanaryItem,
    Manifest,
    canonical_json,
    load_canary,
)
from edgecloud.adapters._signing import SignedManifest, load_public_keys, verify
from edgecloud.backends._base import AdapterCapable
from edgecloud.common.files import fsync_dir, hash_file
from edgecloud.common.metrics import metrics
from edgecloud.device._settings import DeviceAdaptersConfig
from edgecloud.errors import (
    AdapterCanaryError,
    AdapterError,
    AdapterFormatError,
    AdapterIntegrityError,
    AdapterMismatchError,
    AdapterSignatureError,
    ConfigError,
    EdgeCloudError,
    TransportError,
)
from edgecloud.transport._adapters import AdapterOffer
from edgecloud.types import ChatMessage, Chunk, Finish, SamplingParams

__all__ = ["AdapterBackend", "AdapterManager", "AdapterSource"]

log = logging.getLogger("edgecloud.adapters")

_STATE_FILE = "current.json"
_TMP_PREFIX = ".tmp-"
_DOWNLOADS = ".download"
_CANARY_TOKENS = 48


class AdapterBackend(AdapterCapable, Protocol):
    """What the manager needs of a backend: hot-swap, and greedy answers for the canary."""

    def stream(
        self,
        prompt: str | Sequence[ChatMessage],
        params: SamplingParams,
        cancel: threading.Event | None = None,
        *,
        prefix: str = "",
    ) -> Iterator[Chunk | Finish]: ...


class AdapterSource(Protocol):
    """Where offers and files come from: :class:`edgecloud.transport.AdapterSyncClient`."""

    def watch(
        self,
        adapter_id: str,
        *,
        device_id: str = "",
        cohort: str | None = None,
        current_version: int = 0,
    ) -> AsyncIterator[AdapterOffer]: ...

    async def fetch(
        self,
        adapter_id: str,
        version: int,
        name: str,
        dest: Path,
        *,
        expected_sha256: str,
        expected_size: int,
        timeout_s: float | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Path: ...

    async def report(
        self,
        adapter_id: str,
        version: int,
        status: str,
        *,
        device_id: str = "",
        detail: str = "",
        timeout_s: float | None = None,
    ) -> None: ...


class _State(BaseModel):
    """``current.json``: the last good version and the versions never to retry."""

    model_config = ConfigDict(extra="forbid")

    version: int | None = None
    bad: list[int] = Field(default_factory=list)


def _write_durable(path: Path, data: bytes) -> None:
    """Write ``path`` so that after a crash it holds the old bytes or the new, never half."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_dir(path.parent)


def _sha256(path: Path) -> tuple[str, int]:
    digest, size = hash_file(path)
    return digest.hexdigest(), size


class AdapterManager:
    """Keeps the device's backend on the adapter version the cloud assigns to it.

    Args:
        backend: the device's text backend (it hot-swaps adapters; the real one is
            :class:`edgecloud.backends.LlamaCppBackend`).
        config: ``settings.device.adapters``.
        base_sha256: sha256 of the base GGUF the backend runs.
        base_architecture: its ``general.architecture`` (e.g. ``gemma3``).
        root: where versions are installed (``config.directory`` or
            ``<cache_dir>/adapters``); each adapter id gets a subdirectory.
        client: the cloud's adapter sync service; None: only :meth:`start` (restore)
            and :meth:`apply` with offers from elsewhere.
        step_hook: called with the name of each install step ("downloaded",
            "staged", "installed", "swapped"); tests inject crashes here.
        on_swap: told the :class:`AdapterRouting` of each version swapped in, rolled
            back to or restored (version None: the base model runs), e.g.
            :meth:`HybridEngine.set_adapter_routing`.

    Raises:
        ConfigError: a public key or the canary file cannot be read.

    Examples:
        >>> manager = AdapterManager(backend, settings.device.adapters,     # doctest: +SKIP
        ...     base_sha256=sha, base_architecture="gemma3", root=root, client=sync)
        >>> manager.start()                                                  # doctest: +SKIP
        >>> task = manager.start_watching()                                  # doctest: +SKIP
    """

    def __init__(
        self,
        backend: AdapterBackend,
        config: DeviceAdaptersConfig,
        *,
        base_sha256: str,
        base_architecture: str,
        root: Path,
        client: AdapterSource | None = None,
        step_hook: Callable[[str], None] | None = None,
        on_swap: Callable[[AdapterRouting], None] | None = None,
    ) -> None:
        self._backend = backend
        self._config = config
        self._base_sha = base_sha256.lower()
        self._arch = base_architecture
        self._dir = Path(root).expanduser() / config.adapter_id
        self._client = client
        self._hook = step_hook or (lambda step: None)
        self._on_swap = on_swap or (lambda routing: None)
        self._trusted = load_public_keys(config.public_keys)
        self._canary = load_canary(config.canary) if config.canary is not None else None
        self.device_id = config.device_id or socket.gethostname()
        self._current: int | None = None
        self._bad: set[int] = set()
        self._rejected: set[int] = set()  # refused this session (e.g. untrusted key)
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    @property
    def current_version(self) -> int | None:
        """The version running now (None: the base model)."""
        return self._current

    @property
    def bad_versions(self) -> frozenset[int]:
        """Versions that failed their canary or do not fit this device; never retried."""
        return frozenset(self._bad)

    def installed_versions(self) -> list[int]:
        """Versions installed on disk, ascending."""
        if not self._dir.is_dir():
            return []
        return sorted(int(p.name) for p in self._dir.iterdir() if p.name.isdigit() and p.is_dir())

    # -- restore ----------------------------------------------------------------------------

    def start(self) -> int | None:
        """Clean up after a crash and restore the last good version into the backend.

        A version whose files no longer verify (signature, base model, sha256) is
        not restored: the device runs the base model and waits for the next offer.

        Returns:
            The version running now (None: the base model).
        """
        self._dir.mkdir(parents=True, exist_ok=True)
        for leftover in self._dir.glob(_TMP_PREFIX + "*"):
            log.warning("removing half-installed adapter directory %s", leftover)
            shutil.rmtree(leftover, ignore_errors=True)
        state = self._load_state()
        self._bad = set(state.bad)
        self._current = None
        if state.version is None:
            return None
        try:
            path, manifest = self._verified_install(state.version)
            self._backend.set_adapter(path, scale=self._config.scale)
            self._on_swap(self._routing(state.version, manifest))
        except (AdapterError, OSError) as exc:
            log.error("cannot restore adapter version %d: %s", state.version, exc)
            self._save_state()
            return None
        self._current = state.version
        self._publish(state.version)
        log.warning("restored adapter %s version %d", self._config.adapter_id, state.version)
        return self._current

    def _load_state(self) -> _State:
        path = self._dir / _STATE_FILE
        try:
            return _State.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return _State()
        except (OSError, ValidationError) as exc:
            log.error("ignoring unreadable %s: %s", path, exc)
            return _State()

    def _save_state(self) -> None:
        state = _State(version=self._current, bad=sorted(self._bad))
        _write_durable(self._dir / _STATE_FILE, state.model_dump_json().encode())

    def _verified_install(self, version: int) -> tuple[Path, Manifest]:
        """The installed GGUF of ``version`` and its manifest, after checking them again
        end to end."""
        where = self._dir / str(version)
        try:
            meta = json.loads((where / "manifest.sig").read_bytes())
            signed = SignedManifest(
                (where / "manifest.json").read_bytes(),
                bytes.fromhex(meta["signature"]),
                str(meta["key_id"]),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise AdapterIntegrityError(f"installed version {version} is incomplete") from exc
        manifest = self._check(signed, self._config.adapter_id, version)
        entry = manifest.files[DEVICE_FILE]
        path = where / DEVICE_FILE
        if _sha256(path) != (entry.sha256, entry.size):
            raise AdapterIntegrityError(f"installed {path} differs from its manifest")
        return path, manifest

    # -- one offer --------------------------------------------------------------------------

    def _check(self, signed: SignedManifest, adapter_id: str, version: int) -> Manifest:
        manifest = verify(signed, self._trusted)
        if manifest.adapter_id != adapter_id or manifest.version != version:
            raise AdapterFormatError(
                f"offer of {adapter_id} v{version} carries the manifest of "
                f"{manifest.adapter_id} v{manifest.version}"
            )
        if manifest.base_model_sha256 != self._base_sha:
            raise AdapterMismatchError(
                f"adapter {adapter_id} v{version} was trained for base model "
                f"{manifest.base_model_sha256[:16]}..., this device runs {self._base_sha[:16]}..."
            )
        if manifest.base_architecture != self._arch:
            raise AdapterMismatchError(
                f"adapter {adapter_id} v{version} is for {manifest.base_architecture}, "
                f"this device runs {self._arch}"
            )
        if DEVICE_FILE not in manifest.files:
            raise AdapterFormatError(f"adapter {adapter_id} v{version} has no {DEVICE_FILE}")
        return manifest

    async def apply(self, offer: AdapterOffer) -> int | None:
        """Bring the backend to the offered version (0: the base model) and report it.

        Returns:
            The version running afterwards (None: the base model).

        Raises:
            AdapterSignatureError, AdapterMismatchError, AdapterFormatError: the version
                is refused (reported as ``rejected``); nothing changed.
            AdapterIntegrityError, TransportError: the download failed or was
                truncated (reported as ``download_failed``); a later offer resumes it.
            AdapterCanaryError: installed, failed the canary and was rolled back
                (reported as ``canary_failed``; never retried).
        """
        async with self._lock:
            version = offer.version
            if offer.adapter_id != self._config.adapter_id:
                raise AdapterFormatError(
                    f"offer for adapter {offer.adapter_id!r}; this device follows "
                    f"{self._config.adapter_id!r}"
                )
            if version == (self._current or 0):
                await self._report(version, "running")
                return self._current
            if version in self._bad or version in self._rejected:
                log.info("ignoring offer of bad adapter version %d", version)
                return self._current
            if version == 0:
                await self._swap(None, AdapterRouting())
                self._current = None
                await asyncio.to_thread(self._save_state)
                await self._report(0, "running")
                return None
            try:
                return await self._apply(offer)
            except (AdapterIntegrityError, TransportError) as exc:
                await self._report(version, "download_failed", str(exc))
                raise
            except AdapterCanaryError:
                raise  # reported by _apply, after the rollback
            except (AdapterMismatchError, AdapterFormatError) as exc:
                self._bad.add(version)
                await asyncio.to_thread(self._save_state)
                await self._report(version, "rejected", str(exc))
                raise
            except AdapterSignatureError as exc:
                # Not persisted: a key added to the settings later may trust it.
                self._rejected.add(version)
                await self._report(version, "rejected", str(exc))
                raise

    async def _apply(self, offer: AdapterOffer) -> int:
        version = offer.version
        signed = SignedManifest(offer.manifest_json, offer.signature, offer.key_id)
        manifest = self._check(signed, offer.adapter_id, version)
        path = await self._install(signed, manifest)
        previous = self._current
        try:
            await self._swap(path, self._routing(version, manifest))
        except AdapterError:
            # Refused before the swap (not a LoRA GGUF, another architecture): the
            # backend still runs the previous version; the files are useless.
            await asyncio.to_thread(shutil.rmtree, path.parent, True)
            raise
        self._hook("swapped")
        items = self._canary if self._canary is not None else list(manifest.canary)
        calibration = manifest.calibration if self._config.calibration else None
        passed = await asyncio.to_thread(self._run_canary, items, calibration)
        if items and passed / len(items) < self._config.canary_min_pass:
            detail = f"{passed}/{len(items)} canary prompts passed"
            log.error("adapter %s v%d failed its canary (%s); rolling back to %s",
                      offer.adapter_id, version, detail, previous or "the base model")  # fmt: skip
            await self._swap(*await asyncio.to_thread(self._good_path, previous))
            metrics().adapter_rollbacks.labels(self._config.adapter_id).inc()
            self._bad.add(version)
            await asyncio.to_thread(self._save_state)
            await asyncio.to_thread(shutil.rmtree, path.parent, True)
            await self._report(version, "canary_failed", detail)
            raise AdapterCanaryError(f"adapter {offer.adapter_id} v{version}: {detail}")
        self._current = version
        await asyncio.to_thread(self._save_state)
        await asyncio.to_thread(self._prune)
        log.warning("adapter %s version %d running", offer.adapter_id, version)
        await self._report(version, "running")
        return version

    def _good_path(self, version: int | None) -> tuple[Path | None, AdapterRouting]:
        """The GGUF to roll back to and its routing; the base model when the old version
        is unusable."""
        if version is None:
            return None, AdapterRouting()
        try:
            path, manifest = self._verified_install(version)
        except (AdapterError, OSError) as exc:
            log.error("cannot roll back to version %d (%s): using the base model", version, exc)
            self._current = None
            return None, AdapterRouting()
        return path, self._routing(version, manifest)

    def _routing(self, version: int, manifest: Manifest) -> AdapterRouting:
        """What the engine applies with ``version``: its scope and calibration, unless
        this device turned them off (``device.adapters.scope`` / ``.calibration``)."""
        return AdapterRouting(
            version,
            manifest.scope if self._config.scope else None,
            manifest.calibration if self._config.calibration else None,
        )

    async def _swap(self, path: Path | None, routing: AdapterRouting) -> None:
        await asyncio.to_thread(self._backend.set_adapter, path, scale=self._config.scale)
        self._publish(routing.version, swapped=True)
        # After the swap: until the new routing arrives, requests see the new adapter
        # under the old scope and thresholds (or none), never the old adapter under the
        # new ones.
        await asyncio.to_thread(self._on_swap, routing)

    def _publish(self, version: int | None, *, swapped: bool = False) -> None:
        """The version the backend runs now, in the metrics (0: the base model)."""
        m = metrics()
        m.adapter_version.labels(self._config.adapter_id).set(version or 0)
        if swapped:
            m.adapter_swaps.labels(self._config.adapter_id).inc()

    async def _install(self, signed: SignedManifest, manifest: Manifest) -> Path:
        version = manifest.version
        final = self._dir / str(version)
        if final.is_dir():
            with contextlib.suppress(AdapterError, OSError):
                path, _ = await asyncio.to_thread(self._verified_install, version)
                return path
            await asyncio.to_thread(shutil.rmtree, final, True)
        if self._client is None:
            raise TransportError(f"adapter version {version} is not installed and no cloud is set")
        entry = manifest.files[DEVICE_FILE]
        download = self._dir / _DOWNLOADS / str(version) / DEVICE_FILE
        await self._client.fetch(
            manifest.adapter_id, version, DEVICE_FILE, download,
            expected_sha256=entry.sha256, expected_size=entry.size,
        )  # fmt: skip
        self._hook("downloaded")
        await asyncio.to_thread(self._stage, signed, download, final)
        return final / DEVICE_FILE

    def _stage(self, signed: SignedManifest, download: Path, final: Path) -> None:
        tmp = self._dir / f"{_TMP_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        os.replace(download, tmp / DEVICE_FILE)
        sig = {"key_id": signed.key_id, "signature": signed.signature.hex()}
        for name, data in (("manifest.json", signed.manifest_json),
                           ("manifest.sig", canonical_json(sig))):  # fmt: skip
            with (tmp / name).open("wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        with (tmp / DEVICE_FILE).open("rb") as f:
            os.fsync(f.fileno())
        fsync_dir(tmp)
        self._hook("staged")
        # One rename: the version directory exists complete, or not at all.
        os.replace(tmp, final)
        fsync_dir(self._dir)
        shutil.rmtree(download.parent, ignore_errors=True)
        self._hook("installed")

    def _prune(self) -> None:
        installed = self.installed_versions()
        keep = {v for v in installed[-self._config.keep :]}
        if self._current is not None:
            keep.add(self._current)
        for version in installed:
            if version not in keep:
                shutil.rmtree(self._dir / str(version), ignore_errors=True)
        # Partial downloads of versions given up on; none is in progress (the lock is held).
        shutil.rmtree(self._dir / _DOWNLOADS, ignore_errors=True)

    def _run_canary(
        self, items: Sequence[CanaryItem], calibration: AdapterCalibration | None = None
    ) -> int:
        """How many canary prompts the running adapter passes: the greedy answer contains
        the expected text (any case), and, where the round measured it and the version
        carries a calibration, the calibrated router decides as it did in the round."""
        passed = 0
        for item in items:
            params = SamplingParams(temperature=0.0, max_tokens=_CANARY_TOKENS, stop=item.stop)
            # Raw text, as the device's apps send it and the trainer's records hold it (a
            # chat template would change the prompt the adapter learned to complete).
            chunks = [
                event for event in self._backend.stream(item.prompt, params)
                if isinstance(event, Chunk)
            ]  # fmt: skip
            text = "".join(c.text for c in chunks)
            ok = item.expect.lower() in text.lower()
            why = "" if ok else "answer"
            if ok and calibration is not None and item.escalate is not None:
                escalate = calibration.escalates(
                    [c.logprob for c in chunks], [c.entropy for c in chunks]
                )
                ok = escalate == item.escalate
                why = (
                    "" if ok else f"router escalates={escalate}, the round measured {item.escalate}"
                )
            log.info(
                "canary %r -> %r: %s",
                item.prompt[:40],
                text[:60],
                "pass" if ok else f"FAIL ({why})",
            )
            passed += ok
        return passed

    async def _report(self, version: int, status: str, detail: str = "") -> None:
        if self._client is None:
            return
        try:
            await self._client.report(
                self._config.adapter_id, version, status, device_id=self.device_id, detail=detail
            )
        except EdgeCloudError as exc:
            # The registry's fleet view lags; the device's own state is what counts.
            log.warning("could not report adapter status %s: %s", status, exc)

    # -- following the cloud ----------------------------------------------------------------

    async def run(self) -> None:
        """Follow the cloud's offers forever; re-open the stream after ``reconnect_s``.

        A failed download ends the stream on purpose: re-opening it brings the
        assignment again, and the download resumes where it stopped.
        """
        if self._client is None:
            raise ConfigError("the adapter manager has no cloud to watch")
        cfg = self._config
        while True:
            try:
                stream = self._client.watch(
                    cfg.adapter_id,
                    device_id=self.device_id,
                    cohort=cfg.cohort,
                    current_version=self._current or 0,
                )
                # aclosing: a `break` ends the call now, not when the generator is collected.
                async with contextlib.aclosing(stream) as offers:  # type: ignore[type-var]
                    async for offer in offers:
                        try:
                            await self.apply(offer)
                        except (AdapterIntegrityError, TransportError) as exc:
                            log.warning("adapter download failed, retrying: %s", exc)
                            break
                        except AdapterError as exc:
                            log.error("adapter version %d refused: %s", offer.version, exc)
            except EdgeCloudError as exc:
                log.warning("adapter watch stream broke: %s", exc)
            await asyncio.sleep(cfg.reconnect_s)

    def start_watching(self) -> asyncio.Task[None]:
        """Run :meth:`run` as a task of the running event loop."""
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self.run())
        return self._task

    @property
    def following(self) -> AdapterSource | None:
        """The client of the cloud this manager follows (None: none)."""
        return self._client

    async def follow(self, client: AdapterSource | None) -> None:
        """Follow another cloud from now on (a discovered one, or the next after the one
        followed left the LAN); None stops following. An install in progress is
        abandoned and resumes from the new cloud's offer."""
        await self.stop()
        self._client = client
        if client is not None:
            self.start_watching()

    async def stop(self) -> None:
        """Stop watching (an install in progress is abandoned; restart resumes safely)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
