"""The one error tree of edgecloud.

Every error the SDK raises on purpose derives from :class:`EdgeCloudError`.
Each class says whether retrying the same call may succeed (``retryable``)::

    EdgeCloudError                      root; never raised itself
    ├── ConfigError                     bad settings or TOML (not retryable)
    ├── InvalidRequestError             bad call arguments: empty prompt, invalid
    │                                   UTF-8, max_tokens out of range (not retryable)
    ├── StreamNotFinishedError          a stream's result read before the stream ended
    │                                   (not retryable)
    ├── StructuredOutputError           an answer asked to follow a JSON schema ended
    │                                   without a valid value (cut by max_tokens, a
    │                                   stop sequence or a cancel; not retryable)
    ├── NotFoundError                   the service has no such thing (NOT_FOUND;
    │   │                               not retryable)
    │   ├── UnknownAdapterError         (also an AdapterError, below)
    │   └── UnknownModelError           (also a SplitError, below)
    ├── DeviceError                     the on-device runtime
    │   ├── ModelLoadError              a model file could not be loaded
    │   │   ├── ModelNotFoundError      the path does not exist
    │   │   └── ModelIntegrityError     wrong sha256, truncated, not a GGUF/ONNX
    │   ├── ContextOverflowError        prompt longer than the model context
    │   └── BackendClosedError          the backend was closed
    ├── TransportError                  the wire to the cloud (retryable)
    │   ├── AuthError                   missing, wrong or insufficient credentials
    │   │                               (UNAUTHENTICATED / PERMISSION_DENIED; not retryable)
    │   ├── OverloadedError             the service is at its limits (RESOURCE_EXHAUSTED)
    │   ├── DeadlineExceededError       the call's deadline passed
    │   └── RemoteError                 the service failed internally (not retryable)
    ├── CloudError                      the cloud service's own runtime
    │   └── CloudModelLoadError         the cloud model could not be loaded (not retryable)
    ├── SplitError                      split inference of tensor models (not retryable)
    │   ├── InvalidCutError             the tensors do not separate the graph's inputs
    │   │                               from its outputs, or name no tensor of it
    │   ├── ActivationError             an activation is truncated, over the size limit,
    │   │                               or its shape/dtype does not match the cut
    │   └── UnknownModelError           the service holds no tensor model of that name
    │                                   (a NotFoundError)
    ├── AdapterError                    LoRA adapters: signature, hash, format
    │   ├── UnknownAdapterError         no adapter (version, file) with that id is there
    │   │                               (a NotFoundError)
    │   ├── AdapterSignatureError       unsigned, or signed by a key the device does not trust
    │   ├── AdapterIntegrityError       a file's sha256 or size differs from its manifest
    │   │                               (tampered or truncated download)
    │   ├── AdapterFormatError          not a LoRA adapter (e.g. a GGUF whose general.type
    │   │                               is not ``adapter``), or a bad adapter name
    │   ├── AdapterMismatchError        made for another base model (sha256 or architecture)
    │   └── AdapterCanaryError          installed but failed the device's canary prompts
    └── DiscoveryError                  zeroconf / static endpoints (retryable)
        └── UntrustedServiceError       a discovered service failed the identity check:
                                        another certificate than advertised, or one
                                        the device does not trust (not retryable)

Native errors (llama.cpp, onnxruntime, gRPC) are translated where they occur,
with ``raise ... from exc`` so the cause stays visible in tracebacks. Over gRPC,
``INVALID_ARGUMENT`` and ``OUT_OF_RANGE`` become :class:`InvalidRequestError`, and
``NOT_FOUND`` becomes :class:`UnknownAdapterError` or :class:`UnknownModelError` when
the service says which (its message starts with "unknown adapter" or "unknown model"),
else :class:`NotFoundError` (see ``edgecloud.transport``).
"""

from __future__ import annotations

__all__ = [
    "ActivationError",
    "AdapterCanaryError",
    "AdapterError",
    "AdapterFormatError",
    "AdapterIntegrityError",
    "AdapterMismatchError",
    "AdapterSignatureError",
    "AuthError",
    "BackendClosedError",
    "CloudError",
    "CloudModelLoadError",
    "ConfigError",
    "ContextOverflowError",
    "DeadlineExceededError",
    "DeviceError",
    "DiscoveryError",
    "EdgeCloudError",
    "InvalidCutError",
    "InvalidRequestError",
    "ModelIntegrityError",
    "ModelLoadError",
    "ModelNotFoundError",
    "NotFoundError",
    "OverloadedError",
    "RemoteError",
    "SplitError",
    "StreamNotFinishedError",
    "StructuredOutputError",
    "TransportError",
    "UnknownAdapterError",
    "UnknownModelError",
    "UntrustedServiceError",
]


class EdgeCloudError(Exception):
    """Root of every error edgecloud raises on purpose."""

    retryable: bool = False
    """Whether the same call may succeed if tried again later."""


class ConfigError(EdgeCloudError):
    """Settings failed validation; the message names each offending field."""


class InvalidRequestError(EdgeCloudError, ValueError):
    """The arguments of a call are invalid (also a ``ValueError``)."""


class StreamNotFinishedError(EdgeCloudError, RuntimeError):
    """A stream's ``result`` was read before the stream ended (also a ``RuntimeError``)."""


class StructuredOutputError(EdgeCloudError, ValueError):
    """An answer constrained to a JSON schema ended before it was a valid value.

    The grammar keeps every token on the schema, so this means the answer was cut:
    ``max_tokens`` (raise it), a stop sequence, a cancel, or a cloud answer from a
    service that could not constrain it. ``text`` holds what was generated.
    """

    def __init__(self, message: str, *, text: str = "") -> None:
        super().__init__(message)
        self.text = text


class NotFoundError(EdgeCloudError):
    """The service holds nothing of the requested name (gRPC ``NOT_FOUND``).

    Catch this to handle any missing thing; the subclasses say which kind.
    """


class DeviceError(EdgeCloudError):
    """Something went wrong in the on-device runtime."""


class ModelLoadError(DeviceError):
    """A model file exists but could not be loaded."""


class ModelNotFoundError(ModelLoadError, FileNotFoundError):
    """The model path does not exist."""


class ModelIntegrityError(ModelLoadError):
    """The model file is corrupt: wrong checksum, truncated, or the wrong format."""


class ContextOverflowError(DeviceError, InvalidRequestError):
    """The prompt does not fit in the model's context window."""

    def __init__(self, message: str, *, prompt_tokens: int, context_tokens: int) -> None:
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.context_tokens = context_tokens


class BackendClosedError(DeviceError):
    """The backend was closed; create a new one."""


class TransportError(EdgeCloudError):
    """The connection to a cloud service failed."""

    retryable = True


class AuthError(TransportError):
    """The service refused the credentials (missing, wrong, or not allowed this call)."""

    retryable = False


class OverloadedError(TransportError):
    """The service is at its concurrency or queue limit; retry later with backoff."""


class DeadlineExceededError(TransportError):
    """The call did not finish before its deadline."""


class RemoteError(TransportError):
    """The service failed while handling the call; its details stay on the server."""

    retryable = False


class CloudError(EdgeCloudError):
    """Something went wrong in the cloud service's own runtime."""


class CloudModelLoadError(CloudError):
    """The cloud model (GGUF or HF directory) or an adapter could not be loaded."""


class SplitError(EdgeCloudError):
    """Split inference of a tensor model (partitioning, activations, tail service) failed."""


class InvalidCutError(SplitError, InvalidRequestError):
    """The cut names no tensor of the graph, or does not separate its inputs from its outputs."""


class ActivationError(SplitError, InvalidRequestError):
    """An activation is truncated, over the size limit, or does not match the cut's shape/dtype."""


class UnknownModelError(SplitError, NotFoundError):
    """The service holds no tensor model of the requested name (gRPC ``NOT_FOUND``)."""


class AdapterError(EdgeCloudError):
    """A LoRA adapter is invalid, unsigned, or does not match the base model."""


class UnknownAdapterError(AdapterError, NotFoundError):
    """No adapter with the requested id is loaded where the call ran."""


class AdapterSignatureError(AdapterError):
    """The manifest is unsigned, or its Ed25519 signature does not verify with a trusted key."""


class AdapterIntegrityError(AdapterError):
    """A file's sha256 or size differs from what the signed manifest says."""


class AdapterFormatError(AdapterError, InvalidRequestError):
    """Not a LoRA adapter (a GGUF that is not ``general.type=adapter``), or a bad id/name."""


class AdapterMismatchError(AdapterError):
    """The adapter was trained for another base model (sha256 or architecture)."""


class AdapterCanaryError(AdapterError):
    """An installed adapter failed the device's canary prompts and was rolled back."""


class DiscoveryError(EdgeCloudError):
    """Cloud services could not be discovered."""

    retryable = True


class UntrustedServiceError(DiscoveryError):
    """A discovered service presented another certificate than it advertised, or one the
    device trusts neither by CA nor by pin; it is never given the device's token."""

    retryable = False
