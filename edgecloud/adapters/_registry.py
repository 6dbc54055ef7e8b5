"""The adapter registry: signed versions, staged rollout and fleet reports on fsspec.

Layout under the registry root (a local directory or any fsspec URL)::

    <adapter_id>/
        rollout.json                  stable version, candidate, percent, cohort, history
        <version>/
            .claim                    created exclusively: the version number is taken
            files/<name>              the version's files (adapter.gguf, peft/...)
            manifest.sig              {"key_id": ..., "signature": base64}
            manifest.json             the signed bytes; written last
        fleet/<sha256(device)>.json   the last report of each device

A version without ``manifest.json`` is not visible (a publish that died half way).
Version numbers are claimed by creating ``.claim`` exclusively, so two publishers
never get the same number (on local and in-memory filesystems; object stores
without conditional writes give no such guarantee). State files are written to
a temporary name and moved into place, so readers never see half a file.

A device is in a candidate's audience when its cohort equals the rollout's
cohort, or when a stable hash of (adapter id, device id) falls below the
rollout percent: raising the percent only adds devices, never swaps them.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import fsspec  # type: ignore[import-untyped]
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgecloud.adapters._manifest import (
    AdapterCalibration,
    AdapterScope,
    CanaryItem,
    FileEntry,
    Manifest,
    TrainingData,
    canonical_json,
    check_adapter_id,
    check_file_name,
    first_error,
)
from edgecloud.adapters._signing import SignedManifest, sign
from edgecloud.errors import (
    AdapterError,
    AdapterFormatError,
    AdapterIntegrityError,
    InvalidRequestError,
    UnknownAdapterError,
)

__all__ = ["AdapterRegistry", "DeviceReport", "RolloutState", "in_audience"]

log = logging.getLogger("edgecloud.adapters")

_BLOCK = 1 << 20
_LOCK_WAIT_S = 10.0
_MAX_DEVICE_ID = 128
_MAX_DETAIL = 1024
_MAX_STATUS = 64


class RolloutState(BaseModel):
    """Which version of an adapter which devices should run.

    ``stable`` goes to every device outside the candidate's audience (None: the
    base model, no adapter). ``candidate`` goes to the audience: the ``cohort``
    and ``percent`` of all other devices.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    stable: int | None = None
    candidate: int | None = None
    percent: float = Field(0.0, ge=0.0, le=100.0)
    cohort: str | None = None
    history: tuple[int | None, ...] = Field(
        (), description="Earlier stable versions, oldest first (what rollback returns to)."
    )
    withdrawn: tuple[int, ...] = Field((), description="Versions rolled back; never offered.")
    updated_at: datetime | None = None


class DeviceReport(BaseModel):
    """The last thing a device said about an adapter."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    device_id: str
    adapter_id: str
    version: int = Field(ge=0, description="0: the base model, no adapter.")
    status: str
    detail: str = ""
    at: datetime


def in_audience(adapter_id: str, device_id: str, percent: float) -> bool:
    """Whether the device falls in the first ``percent`` of a stable hash order."""
    digest = hashlib.sha256(f"{adapter_id}\0{device_id}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") / float(1 << 64) * 100.0
    return bucket < percent


def _now() -> datetime:
    return datetime.now(timezone.utc)


class AdapterRegistry:
    """Signed adapter versions on any fsspec filesystem.

    Args:
        url: a local directory or an fsspec URL (``memory://reg``, ``s3://bucket/prefix``).
        storage_options: passed to the fsspec filesystem (credentials, endpoints).

    Examples:
        >>> reg = AdapterRegistry("/srv/edgecloud/registry")              # doctest: +SKIP
        >>> m = reg.publish({"adapter.gguf": gguf, ...}, key=key, ...)    # doctest: +SKIP
        >>> reg.rollout(m.adapter_id, m.version, percent=10)              # doctest: +SKIP
    """

    def __init__(self, url: str | Path, **storage_options: Any) -> None:
        text = str(url)
        self.url = text if "://" in text else str(Path(text).expanduser())
        self._fs, root = fsspec.core.url_to_fs(self.url, **storage_options)
        self._root = root.rstrip("/")

    def _path(self, *parts: str | int) -> str:
        return "/".join([self._root, *(str(p) for p in parts)])

    def _adapter(self, adapter_id: str) -> str:
        return self._path(check_adapter_id(adapter_id))

    def _write_atomic(self, path: str, data: bytes) -> None:
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with self._fs.open(tmp, "wb") as f:
            f.write(data)
        # A rename within a directory: readers see the old bytes or the new, never half.
        self._fs.mv(tmp, path)

    def _read(self, path: str) -> bytes | None:
        try:
            data: bytes = self._fs.cat_file(path)
        except FileNotFoundError:
            return None
        return data

    @contextlib.contextmanager
    def _locked(self, adapter_id: str) -> Iterator[None]:
        """Serialize read-modify-write of ``rollout.json`` between processes."""
        lock = self._path(adapter_id, "rollout.lock")
        self._fs.makedirs(self._path(adapter_id), exist_ok=True)
        deadline = time.monotonic() + _LOCK_WAIT_S
        while True:
            try:
                with self._fs.open(lock, "xb") as f:
                    f.write(str(time.time()).encode())
                break
            except FileExistsError:
                if time.monotonic() > deadline:
                    # Its holder died: state writes are atomic, so breaking the lock
                    # cannot expose half a file, only race a (very) slow writer.
                    log.warning("breaking stale registry lock %s", lock)
                    self._fs.rm_file(lock)
                    continue
                time.sleep(0.02)
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                self._fs.rm_file(lock)

    # -- versions ---------------------------------------------------------------------------

    def adapters(self) -> list[str]:
        """Adapter ids that have a directory in the registry."""
        try:
            entries = self._fs.ls(self._root, detail=False)
        except FileNotFoundError:
            return []
        names = [str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries]
        out = []
        for name in names:
            with contextlib.suppress(AdapterFormatError):
                out.append(check_adapter_id(name))
        return sorted(out)

    def _claimed(self, adapter_id: str) -> list[int]:
        try:
            entries = self._fs.ls(self._adapter(adapter_id), detail=False)
        except FileNotFoundError:
            return []
        found = []
        for entry in entries:
            name = str(entry).rstrip("/").rsplit("/", 1)[-1]
            if name.isdigit() and not name.startswith("0"):
                found.append(int(name))
        return sorted(found)

    def versions(self, adapter_id: str) -> list[int]:
        """Published (visible) versions of an adapter, ascending."""
        base = self._adapter(adapter_id)
        return [
            v for v in self._claimed(adapter_id) if self._fs.exists(f"{base}/{v}/manifest.json")
        ]

    def latest(self, adapter_id: str) -> int | None:
        """The newest published version, or None."""
        found = self.versions(adapter_id)
        return found[-1] if found else None

    def manifest(self, adapter_id: str, version: int) -> SignedManifest:
        """The signed manifest of a published version.

        Raises:
            UnknownAdapterError: no such adapter or version.
            AdapterFormatError: a bad adapter id, or a malformed signature file.
        """
        base = f"{self._adapter(adapter_id)}/{int(version)}"
        data = self._read(f"{base}/manifest.json") if version >= 1 else None
        sig = self._read(f"{base}/manifest.sig") if data is not None else None
        if data is None or sig is None:
            raise UnknownAdapterError(f"adapter {adapter_id!r} has no version {version}")
        try:
            meta = json.loads(sig)
            return SignedManifest(data, base64.b64decode(meta["signature"]), str(meta["key_id"]))
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise AdapterFormatError(f"{base}/manifest.sig is malformed") from exc

    def open_file(self, adapter_id: str, version: int, name: str, offset: int = 0) -> IO[bytes]:
        """A file of a version, opened for reading at ``offset``; close it when done.

        Raises:
            UnknownAdapterError: no such version, or the manifest lists no such file.
            AdapterFormatError: a bad adapter id or file name.
            InvalidRequestError: ``offset`` is negative or past the end of the file.
        """
        check_file_name(name)
        entry = self.manifest(adapter_id, version).unverified().files.get(name)
        if entry is None:
            raise UnknownAdapterError(f"adapter {adapter_id!r} {version} has no file {name!r}")
        if offset < 0 or offset > entry.size:
            raise InvalidRequestError(f"offset {offset} outside 0..{entry.size} of {name!r}")
        f: IO[bytes] = self._fs.open(f"{self._adapter(adapter_id)}/{version}/files/{name}", "rb")
        f.seek(offset)
        return f

    def materialize(self, adapter_id: str, version: int, prefix: str, dest: Path) -> Path:
        """Copy the files of a version under ``prefix`` (e.g. ``"peft/"``) into ``dest``,
        each checked against the manifest's sha256; returns ``dest``.

        A complete copy is reused; a new one is written to a temporary directory and
        renamed, so ``dest`` is whole or absent.

        Raises:
            UnknownAdapterError: no such version, or no file under ``prefix``.
            AdapterIntegrityError: a stored file does not match its manifest.
        """
        entries = {
            name[len(prefix) :]: entry
            for name, entry in self.manifest(adapter_id, version).unverified().files.items()
            if name.startswith(prefix)
        }
        if not entries:
            raise UnknownAdapterError(f"adapter {adapter_id!r} {version} has no {prefix!r} files")
        if dest.is_dir() and all((dest / n).is_file() for n in entries):
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
        try:
            for name, entry in entries.items():
                target = tmp / name
                target.parent.mkdir(parents=True, exist_ok=True)
                digest = hashlib.sha256()
                with (
                    self.open_file(adapter_id, version, prefix + name) as src,
                    target.open("wb") as out,
                ):
                    while block := src.read(1 << 20):
                        digest.update(block)
                        out.write(block)
                if digest.hexdigest() != entry.sha256:
                    raise AdapterIntegrityError(
                        f"adapter {adapter_id!r} {version}: {prefix + name} does not match its "
                        "manifest"
                    )
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return dest

    def publish(
        self,
        files: Mapping[str, Path],
        *,
        key: Ed25519PrivateKey,
        adapter_id: str,
        base_model_sha256: str,
        base_architecture: str,
        rank: int,
        alpha: float,
        target_modules: Sequence[str],
        data: TrainingData | Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        canary: Sequence[CanaryItem | Mapping[str, Any]] = (),
        scope: AdapterScope | Mapping[str, Any] | None = None,
        calibration: AdapterCalibration | Mapping[str, Any] | None = None,
    ) -> Manifest:
        """Store a new version (latest + 1) of ``adapter_id`` and return its manifest.

        Files are copied and hashed first; the signed manifest is written last, so
        a publish that dies half way leaves an invisible version. Publishing does
        not roll the version out: call :meth:`rollout`.

        Args:
            files: relative posix name in the version -> local file, e.g.
                ``{"adapter.gguf": ..., "peft/adapter_config.json": ...}``.
            key: the Ed25519 signing key (:func:`load_private_key`).
            scope: the requests the adapter is for (None: every request).
            calibration: escalation thresholds for the requests it answers (None: the
                device's own).

        Raises:
            AdapterFormatError: a bad adapter id or file name, or manifest fields
                out of range.
            FileNotFoundError: a listed file does not exist.
        """
        check_adapter_id(adapter_id)
        if not files:
            raise AdapterFormatError("an adapter version needs at least one file")
        for name in files:
            check_file_name(name)
        version = self._claim(adapter_id)
        base = f"{self._adapter(adapter_id)}/{version}"
        entries: dict[str, FileEntry] = {}
        for name, src in sorted(files.items()):
            entries[name] = self._copy(Path(src), f"{base}/files/{name}")
        try:
            manifest = Manifest(
                adapter_id=adapter_id,
                version=version,
                base_model_sha256=base_model_sha256,
                base_architecture=base_architecture,
                rank=rank,
                alpha=alpha,
                target_modules=tuple(target_modules),
                data=TrainingData.model_validate(data or {}),
                metrics=dict(metrics or {}),
                canary=tuple(CanaryItem.model_validate(c) for c in canary),
                scope=AdapterScope.model_validate(scope) if scope is not None else None,
                calibration=(
                    AdapterCalibration.model_validate(calibration)
                    if calibration is not None
                    else None
                ),
                created_at=_now(),
                files=entries,
            )
        except ValidationError as exc:
            raise AdapterFormatError(f"bad manifest field {first_error(exc)}") from None
        signed = sign(manifest, key)
        sig = {"key_id": signed.key_id, "signature": base64.b64encode(signed.signature).decode()}
        self._write_atomic(f"{base}/manifest.sig", canonical_json(sig))
        self._write_atomic(f"{base}/manifest.json", signed.manifest_json)
        log.warning("published adapter %s version %d (%d files)", adapter_id, version, len(files))
        return manifest

    def _claim(self, adapter_id: str) -> int:
        base = self._adapter(adapter_id)
        version = (max(self._claimed(adapter_id), default=0)) + 1
        while True:
            self._fs.makedirs(f"{base}/{version}", exist_ok=True)
            try:
                with self._fs.open(f"{base}/{version}/.claim", "xb") as f:
                    f.write(uuid.uuid4().hex.encode())
                return version
            except FileExistsError:
                version += 1  # another publisher took it

    def _copy(self, src: Path, dest: str) -> FileEntry:
        digest = hashlib.sha256()
        size = 0
        parent = dest.rsplit("/", 1)[0]
        self._fs.makedirs(parent, exist_ok=True)
        with src.open("rb") as fin, self._fs.open(dest, "wb") as fout:
            while block := fin.read(_BLOCK):
                digest.update(block)
                size += len(block)
                fout.write(block)
        return FileEntry(sha256=digest.hexdigest(), size=size)

    # -- rollout ----------------------------------------------------------------------------

    def rollout_state(self, adapter_id: str) -> RolloutState:
        """The adapter's rollout state (all None before the first rollout)."""
        data = self._read(f"{self._adapter(adapter_id)}/rollout.json")
        if data is None:
            return RolloutState()
        try:
            return RolloutState.model_validate_json(data)
        except ValidationError as exc:
            raise AdapterError(f"rollout state of {adapter_id!r} is malformed") from exc

    def _update(self, adapter_id: str, change: dict[str, Any]) -> RolloutState:
        state = RolloutState.model_validate(
            {**self.rollout_state(adapter_id).model_dump(), **change, "updated_at": _now()}
        )
        self._write_atomic(
            f"{self._adapter(adapter_id)}/rollout.json", state.model_dump_json().encode()
        )
        return state

    def _require(self, adapter_id: str, version: int) -> None:
        if version not in self.versions(adapter_id):
            raise UnknownAdapterError(f"adapter {adapter_id!r} has no version {version}")

    def rollout(
        self, adapter_id: str, version: int, percent: float, cohort: str | None = None
    ) -> RolloutState:
        """Offer ``version`` to ``percent`` of the devices (and all of ``cohort``).

        At 100 percent the version is promoted: it becomes the stable version.

        Raises:
            UnknownAdapterError: no such version.
            InvalidRequestError: percent outside 0..100.
        """
        if not 0.0 <= percent <= 100.0:
            raise InvalidRequestError(f"percent must be within 0..100, not {percent}")
        with self._locked(adapter_id):
            self._require(adapter_id, version)
            state = self.rollout_state(adapter_id)
            if percent >= 100.0:
                return self._promote(adapter_id, state, version)
            withdrawn = tuple(v for v in state.withdrawn if v != version)
            return self._update(
                adapter_id,
                {"candidate": version, "percent": percent, "cohort": cohort or None,
                 "withdrawn": withdrawn},
            )  # fmt: skip

    def promote(self, adapter_id: str) -> RolloutState:
        """Make the candidate the stable version for every device.

        Raises:
            AdapterError: there is no candidate.
        """
        with self._locked(adapter_id):
            state = self.rollout_state(adapter_id)
            if state.candidate is None:
                raise AdapterError(f"adapter {adapter_id!r} has no candidate to promote")
            return self._promote(adapter_id, state, state.candidate)

    def _promote(self, adapter_id: str, state: RolloutState, version: int) -> RolloutState:
        history = state.history
        if state.stable != version:
            history = (*history, state.stable)
        return self._update(
            adapter_id,
            {"stable": version, "candidate": None, "percent": 0.0, "cohort": None,
             "history": history, "withdrawn": tuple(v for v in state.withdrawn if v != version)},
        )  # fmt: skip

    def rollback(self, adapter_id: str, to: int | None = None) -> RolloutState:
        """Withdraw the candidate; without one, go back to the previous stable version.

        Args:
            to: make this published version the stable one instead (and withdraw
                any candidate).

        Raises:
            UnknownAdapterError: ``to`` is not a published version.
            AdapterError: nothing to roll back.
        """
        with self._locked(adapter_id):
            state = self.rollout_state(adapter_id)
            withdrawn = list(state.withdrawn)
            if to is not None:
                self._require(adapter_id, to)
                if state.candidate is not None and state.candidate != to:
                    withdrawn.append(state.candidate)
                if state.stable is not None and state.stable != to:
                    withdrawn.append(state.stable)
                return self._update(
                    adapter_id,
                    {"stable": to, "candidate": None, "percent": 0.0, "cohort": None,
                     "history": (*state.history, state.stable),
                     "withdrawn": tuple(v for v in withdrawn if v != to)},
                )  # fmt: skip
            if state.candidate is not None:
                withdrawn.append(state.candidate)
                return self._update(
                    adapter_id,
                    {"candidate": None, "percent": 0.0, "cohort": None,
                     "withdrawn": tuple(withdrawn)},
                )  # fmt: skip
            if state.stable is None:
                raise AdapterError(f"adapter {adapter_id!r} has nothing to roll back")
            withdrawn.append(state.stable)
            previous = state.history[-1] if state.history else None
            return self._update(
                adapter_id,
                {"stable": previous, "history": state.history[:-1], "withdrawn": tuple(withdrawn)},
            )

    def assigned(self, adapter_id: str, device_id: str, cohort: str | None = None) -> int | None:
        """The version this device should run now (None: the base model)."""
        return self.assigned_in(self.rollout_state(adapter_id), adapter_id, device_id, cohort)

    @staticmethod
    def assigned_in(
        state: RolloutState, adapter_id: str, device_id: str, cohort: str | None = None
    ) -> int | None:
        """:meth:`assigned` for a state already read."""
        if state.candidate is None:
            return state.stable
        if cohort and cohort == state.cohort:
            return state.candidate
        return (
            state.candidate if in_audience(adapter_id, device_id, state.percent) else state.stable
        )

    # -- fleet ------------------------------------------------------------------------------

    def report(
        self,
        device_id: str,
        adapter_id: str,
        version: int,
        status: str,
        detail: str = "",
    ) -> DeviceReport:
        """Record what a device runs (version 0: the base) or why a version failed.

        Raises:
            AdapterFormatError: a bad adapter id.
            InvalidRequestError: empty or oversized device id or status.
        """
        base = self._adapter(adapter_id)
        if not device_id or len(device_id) > _MAX_DEVICE_ID:
            raise InvalidRequestError("device id must be 1-128 characters")
        if not status or len(status) > _MAX_STATUS:
            raise InvalidRequestError("status must be 1-64 characters")
        if version < 0:
            raise InvalidRequestError("version must be >= 0")
        entry = DeviceReport(
            device_id=device_id,
            adapter_id=adapter_id,
            version=version,
            status=status,
            detail=detail[:_MAX_DETAIL],
            at=_now(),
        )
        # One file per device (named by a hash, so any id is a safe name): reports from
        # many devices never contend for one file.
        name = hashlib.sha256(device_id.encode()).hexdigest()[:32]
        self._fs.makedirs(f"{base}/fleet", exist_ok=True)
        self._write_atomic(f"{base}/fleet/{name}.json", entry.model_dump_json().encode())
        return entry

    def fleet(self, adapter_id: str) -> list[DeviceReport]:
        """The last report of every device that reported on this adapter."""
        try:
            entries = self._fs.ls(f"{self._adapter(adapter_id)}/fleet", detail=False)
        except FileNotFoundError:
            return []
        out = []
        for entry in entries:
            path = str(entry)
            if not path.endswith(".json"):
                continue
            data = self._read(path)
            if data is None:
                continue
            try:
                out.append(DeviceReport.model_validate_json(data))
            except ValidationError:
                log.warning("skipping malformed fleet report %s", path)
        return sorted(out, key=lambda r: r.device_id)
