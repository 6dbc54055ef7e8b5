import edgecloud.errors as errors
from edgecloud.errors import (
    ConfigError,
    ContextOverflowError,
    DeviceError,
    EdgeCloudError,
    InvalidRequestError,
    ModelIntegrityError,
    ModelLoadError,
    ModelNotFoundError,
    TransportError,
)


def test_every_error_derives_from_the_root_and_is_in_the_drawn_tree() -> None:
    doc = errors.__doc__ or ""
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, EdgeCloudError), name
        assert name in doc, f"{name} missing from the tree in errors.py's docstring"


def test_hierarchy_and_retryable_flags() -> None:
    assert issubclass(ModelNotFoundError, ModelLoadError)
    assert issubclass(ModelNotFoundError, FileNotFoundError)
    assert issubclass(ModelIntegrityError, ModelLoadError)
    assert issubclass(ModelLoadError, DeviceError)
    assert issubclass(ContextOverflowError, InvalidRequestError)
    assert issubclass(InvalidRequestError, ValueError)
    assert not ConfigError.retryable
    assert not InvalidRequestError.retryable
    assert TransportError.retryable
    err = ContextOverflowError("x", prompt_tokens=10, context_tokens=8)
    assert (err.prompt_tokens, err.context_tokens) == (10, 8)
