"""``with`` and ``async with`` for everything that holds a resource until closed."""

from __future__ import annotations

from types import TracebackType

from typing_extensions import Self

__all__ = ["AsyncClosing", "Closing"]


class Closing:
    """``with obj:`` closes ``obj`` at the end; subclasses define :meth:`close`."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClosing:
    """``async with obj:`` awaits ``obj.aclose()`` at the end; subclasses define it."""

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
