"""Hybrid generation: route each request, hand off mid-answer, survive cloud failures.

One request flows like this:

1. Gather signals (prompt tokens, healthy endpoints, cloud tokens spent, the
   learned router's prediction) and ask the pure policies in
   :mod:`edgecloud.router` where to start.
2. Local start: stream tokens from the device model while a
   :class:`~edgecloud.router.ConfidenceMonitor` watches their log-probability and
   entropy. If the window trips (and the request is not private, the budget allows
   and an endpoint is up), stop locally and ask the cloud to *continue* the
   answer after the text already produced (``assistant_prefix``).
3. Cloud part: endpoints are tried in order, skipping those whose circuit breaker
   is open; one that sends no token within ``first_token_timeout_s`` counts as
   failed. If the cloud fails before its first token the next endpoint is tried;
   if it dies mid-stream (or every endpoint fails) the device finishes the answer
   locally after what it has so far, and the result says so (``route.fallback``).
   A request that demanded the cloud (``route="cloud"``) gets the error instead.
4. Every escalation is written to the escalation log for upload and training.

The app sees one stream; each chunk carries ``source="local"`` or ``"cloud"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from edgecloud.common.aio import DONE, pump_events
from edgecloud.common.records import EscalationRecord
from edgecloud.device._escalation_log import EscalationLog
from edgecloud.device._settings import DeviceCloudConfig
from edgecloud.errors import EdgeCloudError, InvalidRequestError, TransportError
from edgecloud.router import (
    BudgetPolicy,
    ConfidenceMonitor,
    ConnectivityPolicy,
    ContextLengthPolicy,
    Decision,
    ForcedRoutePolicy,
    LearnedRouterPolicy,
    Policy,
    PrivacyPolicy,
    RequestSignals,
    Route,
    WindowThresholds,
    route_request,
)
from edgecloud.router._settings import RouterConfig
from edgecloud.types import ChatMessage, Chunk, Finish, Passage, RouteInfo, SamplingParams

if TYPE_CHECKING:
    from edgecloud.adapters._manifest import AdapterScope
    from edgecloud.common.encoder import SentenceEncoder
    from edgecloud.device._endpoints import Endpoint, EndpointPool
    from edgecloud.device.backends import TextBackend
    from edgecloud.router import LearnedRouter

__all__ = ["CancelScope", "HybridEngine", "prompt_text"]

log = logging.getLogger("edgecloud.device.hybrid")


def prompt_text(prompt: str | Sequence[ChatMessage]) -> str:
    """The text of a prompt as policies see it (all message contents)."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(m.content for m in prompt)


class CancelScope:
    """A request's cancellation: ``set()`` reaches every child event, now or later."""

    def __init__(self, root: threading.Event | None = None) -> None:
        self.root = root or threading.Event()
        self._children: list[threading.Event] = []
        self._lock = threading.Lock()

    def child(self) -> threading.Event:
        ev = threading.Event()
        with self._lock:
            self._children.append(ev)
            if self.root.is_set():
                ev.set()
        return ev

    def set(self) -> None:
        self.root.set()
        with self._lock:
            for ev in self._children:
                ev.set()

    def is_set(self) -> bool:
        return self.root.is_set()


class _CloudUsage:
    """Cloud tokens spent, for the budget policy (kept in memory)."""

    def __init__(self) -> None:
        self._spent: deque[tuple[float, int]] = deque()

    def add(self, now: float, tokens: int) -> None:
        self._spent.append((now, tokens))

    def since(self, now: float, seconds: float) -> int:
        while self._spent and now - self._spent[0][0] > 86_400:
            self._spent.popleft()
        return sum(n for t, n in self._spent if now - t <= seconds)


class HybridEngine:
    """Runs requests across the device model and the cloud pool (see module doc).

    Args:
        backend: the local model.
        pool: cloud endpoints; None for an offline device.
        router: policy settings.
        cloud: timeouts for the cloud part.
        log: where escalations are recorded; None disables recording.
        learned: a learned router and the encoder that embeds prompts for it.
        replay_rate: share of confident local answers logged as replay records
            (``device.log.replay_rate``).
        seed: seeds the replay sampling (tests).
    """

    def __init__(
        self,
        backend: TextBackend,
        *,
        pool: EndpointPool | None,
        router: RouterConfig,
        cloud: DeviceCloudConfig,
        log: EscalationLog | None = None,
        learned: tuple[LearnedRouter, SentenceEncoder] | None = None,
        replay_rate: float = 0.0,
        seed: int | None = None,
    ) -> None:
        self.backend = backend
        self.replay_rate = replay_rate
        self._replay_rng = random.Random(seed)
        self.pool = pool
        self.router_cfg = router
        self.cloud_cfg = cloud
        self.log = log
        self.learned = learned
        self._closed = False
        self._scope: tuple[AdapterScope, SentenceEncoder] | None = None
        self.usage = _CloudUsage()
        self._budget = BudgetPolicy(router.budget_tokens_per_hour, router.budget_tokens_per_day)
        self.policies: list[Policy] = [
            ForcedRoutePolicy(),
            PrivacyPolicy(router.privacy_patterns),
            ConnectivityPolicy(),
            self._budget,
            ContextLengthPolicy(),
            LearnedRouterPolicy(router.learned_threshold),
        ]
        self.thresholds = WindowThresholds(
            window=router.window,
            min_mean_logprob=router.min_mean_logprob,
            max_mean_entropy=router.max_mean_entropy,
            min_tokens=router.min_tokens,
            max_local_tokens=router.max_local_tokens,
        )

    def set_adapter_scope(
        self, scope: AdapterScope | None, *, encoder: SentenceEncoder | None = None
    ) -> None:
        """Answer only requests inside ``scope`` with the backend's adapter (None: all).

        The adapter manager calls this with each version it swaps in. A scope needs
        the sentence encoder it was fitted with (``encoder``, else the learned
        router's, else the embedded default); when that encoder cannot be loaded or
        is another one, the scope is dropped with a warning and the adapter answers
        every request, as a version without a scope does.
        """
        if scope is None:
            self._scope = None
            return
        if encoder is None and self.learned is not None:
            encoder = self.learned[1]
        if encoder is None and self._scope is not None:
            encoder = self._scope[1]
        try:
            if encoder is None:
                from edgecloud.common.encoder import SentenceEncoder

                encoder = SentenceEncoder()
            identity = encoder.identity
        except (EdgeCloudError, ImportError, OSError) as exc:
            log.warning("adapter scope ignored (no sentence encoder: %s): the adapter "
                        "answers every request", exc)  # fmt: skip
            self._scope = None
            return
        if identity != scope.encoder or encoder.dim != len(scope.weights):
            log.warning("adapter scope ignored: fitted with encoder %s, this device has %s; "
                        "the adapter answers every request", scope.encoder, identity)  # fmt: skip
            self._scope = None
            return
        self._scope = (scope, encoder)

    async def _in_scope(self, prompt: str | Sequence[ChatMessage]) -> tuple[float, bool] | None:
        """(the adapter scope's probability for ``prompt``, whether it applies); None:
        no scope is set."""
        current = self._scope
        if current is None:
            return None
        scope, encoder = current
        vec = await asyncio.to_thread(encoder.encode, [scope.text(prompt_text(prompt))])
        p = scope.probability(vec[0].tolist())
        return p, p >= scope.threshold

    def _available(self) -> list[Endpoint]:
        return self.pool.available() if self.pool is not None else []

    async def decide(
        self, prompt: str | Sequence[ChatMessage], route: Route | None
    ) -> tuple[Decision, RequestSignals]:
        """The pre-generation decision for ``prompt`` (signals gathered here, policy pure)."""
        text = prompt_text(prompt)
        n_prompt = await asyncio.to_thread(self.backend.count_tokens, prompt)
        predicted = None
        if self.learned is not None and route is None:
            head, encoder = self.learned
            vec = await asyncio.to_thread(encoder.encode, [text])
            predicted = float(head.predict(vec)[0])
        now = time.monotonic()
        signals = RequestSignals(
            prompt_text=text,
            prompt_tokens=n_prompt,
            local_context=self.backend.n_ctx,
            forced=route,
            healthy_endpoints=len(self._available()),
            cloud_tokens_last_hour=self.usage.since(now, 3600),
            cloud_tokens_last_day=self.usage.since(now, 86_400),
            predicted_poor=predicted,
        )
        return route_request(self.policies, signals), signals

    async def stream(
        self,
        prompt: str | Sequence[ChatMessage],
        params: SamplingParams,
        *,
        route: Route | None = None,
        cancel: CancelScope,
    ) -> AsyncGenerator[Chunk | Finish, None]:
        t0 = time.perf_counter()
        decision, signals = await self.decide(prompt, route)
        if route == "cloud" and decision.route != "cloud":
            if decision.private:
                raise InvalidRequestError(
                    f"the request demands the cloud but must stay on the device: {decision.reason}"
                )
            raise TransportError(f"the request demands the cloud: {decision.reason}")
        signals_out: dict[str, float | int | str | bool] = dict(decision.signals)
        in_scope = await self._in_scope(prompt)
        use_adapter = in_scope is None or in_scope[1]
        if in_scope is not None:
            signals_out["adapter_scope"] = in_scope[0]
            signals_out["adapter_in_scope"] = in_scope[1]
        info = RouteInfo(decision.policy, decision.reason, signals_out, private=decision.private)
        if decision.route == "cloud":
            async for ev in self._cloud_part(
                prompt, params, "", 0, info, cancel, route == "cloud", use_adapter
            ):
                yield ev
            return
        watch = (
            route is None
            and not decision.private
            and self.pool is not None
            and self._budget.decide(signals) is None
        )
        monitor = ConfidenceMonitor(self.thresholds) if watch else None
        parts: list[str] = []
        n = 0
        # Tokens not yet shown to the app (see RouterConfig.holdback_tokens): a hand-off
        # while they are held drops them and the cloud starts the answer afresh.
        held: list[Chunk] = []
        holdback = self.router_cfg.holdback_tokens if monitor is not None else 0
        handoff: Decision | None = None
        finish: Finish | None = None
        async with contextlib.aclosing(
            self._local(prompt, params, "", cancel, use_adapter)
        ) as events:
            async for ev in events:
                if isinstance(ev, Finish):
                    finish = ev
                    break
                parts.append(ev.text)
                n += 1
                if n <= holdback:
                    held.append(ev)
                else:
                    for h in held:
                        yield h
                    held.clear()
                    yield ev
                if monitor is not None and ev.token_id >= 0:
                    trip = monitor.update(ev.logprob, ev.entropy)
                    if trip is not None and self._available():
                        handoff = trip
                        break
                    if trip is not None:  # would hand off, but the cloud is out of reach
                        info = RouteInfo(
                            "connectivity",
                            f"{trip.reason}, but no cloud endpoint is available",
                            dict(trip.signals),
                        )
        if handoff is not None and held:
            parts, n = [], 0  # never shown: the cloud answers the whole request
            held.clear()
        for h in held:
            yield h
        if handoff is None:
            assert finish is not None
            if (
                monitor is not None
                and monitor.fired is None
                and finish.reason == "stop"
                and self._replay_rng.random() < self.replay_rate
            ):
                self._record(
                    prompt, "".join(parts), "", info, t0, params.stop, finish.reason, replay=True
                )
            yield Finish(finish.reason, finish.prompt_tokens, finish.completion_tokens, route=info)
            return
        info = RouteInfo(handoff.policy, handoff.reason, dict(handoff.signals))
        async for ev in self._cloud_part(
            prompt, params, "".join(parts), n, info, cancel, False, use_adapter
        ):
            yield ev

    async def _cloud_part(
        self,
        prompt: str | Sequence[ChatMessage],
        params: SamplingParams,
        prefix: str,
        start: int,
        info: RouteInfo,
        cancel: CancelScope,
        demanded: bool,
        use_adapter: bool = True,
    ) -> AsyncGenerator[Chunk | Finish, None]:
        """Stream the rest of the answer from the cloud; finish locally if it fails."""
        t0 = time.perf_counter()
        remaining = params.max_tokens - start
        cloud_params = params.model_copy(update={"max_tokens": max(remaining, 1)})
        texts: list[str] = []
        n_cloud = 0
        failure: str | None = None
        done: Finish | None = None
        used: Endpoint | None = None
        for ep in self._available():
            if not ep.breaker.allow(time.monotonic()):
                continue
            try:
                async with contextlib.aclosing(
                    self._from_endpoint(ep, prompt, cloud_params, prefix, cancel)
                ) as events:
                    async for ev in events:
                        if isinstance(ev, Finish):
                            done = ev
                            break
                        texts.append(ev.text)
                        yield Chunk(
                            ev.text, ev.token_id, ev.logprob, ev.entropy, "cloud", start + n_cloud
                        )
                        n_cloud += 1
            except EdgeCloudError as exc:
                ep.breaker.record_failure(time.monotonic())
                failure = f"{ep.target}: {exc}"
                log.warning("cloud endpoint %s failed: %s", ep.target, exc)
                if n_cloud or cancel.is_set():
                    break  # died mid-stream: another endpoint would repeat what was sent
                continue
            ep.breaker.record_success()
            used = ep
            break
        if done is not None and used is not None:
            self.usage.add(time.monotonic(), done.prompt_tokens + done.completion_tokens)
            route = replace(
                info, escalated=True, local_tokens_before_handoff=start,
                endpoint=used.target, passages=done.passages,
            )  # fmt: skip
            self._record(prompt, prefix, "".join(texts), route, t0, params.stop, done.reason)
            yield Finish(done.reason, done.prompt_tokens, start + n_cloud, done.passages, route)
            return
        if cancel.is_set():  # the caller cancelled: not a cloud failure
            route = replace(info, escalated=True, local_tokens_before_handoff=start)
            yield Finish(
                "cancelled", done.prompt_tokens if done else 0, start + n_cloud, route=route
            )
            return
        if demanded:
            why = failure or "none available"
            raise TransportError(f"the request demands the cloud and no endpoint answered ({why})")
        fallback = f"cloud failed ({failure or 'no endpoint available'}); finished on the device"
        route = replace(info, escalated=True, local_tokens_before_handoff=start, fallback=fallback)
        local_params = params.model_copy(update={"max_tokens": max(remaining - n_cloud, 1)})
        finish: Finish | None = None
        n_local = 0
        async with contextlib.aclosing(
            self._local(prompt, local_params, prefix + "".join(texts), cancel, use_adapter)
        ) as events:
            async for ev in events:
                if isinstance(ev, Finish):
                    finish = ev
                    break
                yield Chunk(
                    ev.text, ev.token_id, ev.logprob, ev.entropy, "local", start + n_cloud + n_local
                )
                n_local += 1
        assert finish is not None
        self._record(prompt, prefix, "".join(texts), route, t0, params.stop, finish.reason)
        yield Finish(finish.reason, finish.prompt_tokens, start + n_cloud + n_local, route=route)

    async def _from_endpoint(
        self,
        ep: Endpoint,
        prompt: str | Sequence[ChatMessage],
        params: SamplingParams,
        prefix: str,
        cancel: CancelScope,
    ) -> AsyncGenerator[Chunk | Finish, None]:
        agen = ep.client.stream(
            prompt, params, timeout_s=self.cloud_cfg.timeout_s, assistant_prefix=prefix
        )
        try:
            first = True
            while not cancel.is_set():
                try:
                    if first:
                        ev = await asyncio.wait_for(
                            agen.__anext__(), self.cloud_cfg.first_token_timeout_s
                        )
                        first = False
                    else:
                        ev = await agen.__anext__()
                except StopAsyncIteration:
                    return
                except asyncio.TimeoutError as exc:
                    raise TransportError(
                        f"no token within {self.cloud_cfg.first_token_timeout_s:.1f} s"
                    ) from exc
                yield ev
        finally:
            aclose = getattr(agen, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _local(
        self,
        prompt: str | Sequence[ChatMessage],
        params: SamplingParams,
        prefix: str,
        cancel: CancelScope,
        use_adapter: bool = True,
    ) -> AsyncGenerator[Chunk | Finish, None]:
        """The device model's stream, run in a worker thread; leaving early stops it.

        ``use_adapter=False`` (a request outside the adapter's scope) asks the backend
        for its base model; the flag is only passed then, so backends without
        adapters need not know it."""
        stop = cancel.child()
        extra: dict[str, Any] = {} if use_adapter else {"use_adapter": False}
        events = await asyncio.to_thread(
            self.backend.stream, prompt, params, stop, prefix=prefix, **extra
        )
        queue: asyncio.Queue[object] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        worker = threading.Thread(
            target=pump_events,
            args=(events, loop, queue, stop),
            name="edgecloud-local",
            daemon=True,
        )
        worker.start()
        try:
            while True:
                item = await queue.get()
                if item is DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, (Chunk, Finish))
                yield item
        finally:
            stop.set()  # a hand-off or a closed stream: free the model for the next caller
            with contextlib.suppress(Exception):
                while (await queue.get()) is not DONE:
                    pass

    def _record(
        self,
        prompt: str | Sequence[ChatMessage],
        local: str,
        cloud: str,
        route: RouteInfo,
        t0: float,
        stop: Sequence[str],
        finish: str,
        *,
        replay: bool = False,
    ) -> None:
        if self.log is None or route.private:
            return
        # The stop sequences and finish reason tell a trainer where the answer ended.
        extra: dict[str, Any] = {
            "passages": [_passage(p) for p in route.passages],
            "stop": list(stop),
            "finish": finish,
        }
        if replay:
            extra["kind"] = "replay"  # a confident local answer, not an escalation
        if not isinstance(prompt, str):
            extra["messages"] = [m.model_dump() for m in prompt]
        if route.endpoint:
            extra["endpoint"] = route.endpoint
        if route.fallback:
            extra["fallback"] = route.fallback
        try:
            self.log.append(
                EscalationRecord(
                    prompt=prompt_text(prompt),
                    local_partial=local,
                    cloud_answer=cloud,
                    route_policy=route.policy,
                    route_reason=route.reason,
                    signals=dict(route.signals),
                    latency_ms=(time.perf_counter() - t0) * 1000,
                    extra=extra,
                )
            )
        except Exception as exc:  # noqa: BLE001 - logging must never fail an answer
            log.warning("could not record an escalation: %s", exc)

    async def upload_pending(self, batch: int = 100) -> int:
        """Send waiting log records to the first endpoint that takes them; returns how many
        the cloud acknowledged (and were deleted here)."""
        if self.log is None:
            return 0
        records = self.log.pending(batch)
        if not records:
            return 0
        for ep in self._available():
            try:
                acked = await ep.client.upload(records)
            except EdgeCloudError as exc:
                log.info("upload to %s failed: %s", ep.target, exc)
                continue
            return self.log.acknowledge(acked)
        return 0

    async def aclose(self) -> None:
        """Close the cloud endpoints and the escalation log; later calls do nothing.

        The local backend is not closed: the engine was handed it and does not own it.
        """
        if self._closed:
            return
        self._closed = True
        try:
            if self.pool is not None:
                await self.pool.close()
        finally:
            if self.log is not None:
                self.log.close()


def _passage(p: Passage) -> dict[str, Any]:
    return {"text": p.text, "source": p.source, "score": p.score}
