"""Hybrid generation: route each request, hand off mid-answer, survive cloud failures.

One request flows like this:

1. Gather signals (prompt tokens, healthy endpoints, cloud tokens spent, the
   learned router's prediction) and ask the pure policies in
   :mod:`edgecloud.router` where to start.
2. Local start: stream tokens from the device model while a
   :class:`~edgecloud.router.ConfidenceMonitor` watches their log-probability and
   entropy. If the window trips (and the request is not private, the budget allows
   and an endpoint is up), stop locally and hand the answer to the cloud with the
   text produced so far (``assistant_prefix``), held-back tokens included.
3. The cloud verifies that text before it continues (``device.cloud.verify_handoff``):
   it keeps the longest part it agrees with under its own model and knowledge, and
   answers on from there. Kept text the app has not seen yet is shown as local chunks;
   rejected text it has seen is taken back with ``Chunk.retracted`` on the next chunk;
   rejected text it has not seen never is (``device.router.show_unverified = false``
   holds all local text until then, so nothing is ever taken back).
4. Cloud part: endpoints are tried in order, skipping those whose circuit breaker
   is open; one that sends nothing within ``first_token_timeout_s`` counts as
   failed. If the cloud fails before its first event the next endpoint is tried;
   if it dies later (or every endpoint fails) the device finishes the answer
   locally after what stands so far, and the result says so (``route.fallback``).
   A request that demanded the cloud (``route="cloud"``) gets the error instead.
5. An answer the cloud gives from its start may be produced by edge-cloud speculative
   decoding (the ``speculative`` option): the device drafts, the cloud verifies.
6. Every escalation is written to the escalation log for upload and training, with
   the part of the device's text the cloud rejected.
7. A share of the confident local answers is asked of the cloud as well, in the
   background once the answer was delivered (shadow checks, ``device.shadow``): whether
   the cloud agrees is recorded per adapter version, and a disagreement is a labelled
   record for the next round.

The app sees one stream; each chunk carries ``source="local"`` or ``"cloud"``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import random
import sqlite3
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from edgecloud.common.aio import DONE, pump_events
from edgecloud.common.logs import current_request_id, new_request_id
from edgecloud.common.metrics import metrics
from edgecloud.common.records import EscalationRecord
from edgecloud.common.text import same_answer
from edgecloud.device._answer import Emitter, Transcript
from edgecloud.device._escalation_log import EscalationLog
from edgecloud.device._observe import observed
from edgecloud.device._settings import DeviceCloudConfig, DeviceShadowConfig
from edgecloud.device._shadow import ShadowChecks, ShadowStats
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
    PrivacyDetectors,
    PrivacyPolicy,
    RequestSignals,
    Route,
    WindowThresholds,
    route_request,
)
from edgecloud.router._settings import RouterConfig
from edgecloud.types import (
    ChatMessage,
    Chunk,
    Finish,
    FinishReason,
    Passage,
    Retraction,
    RouteInfo,
    SamplingParams,
)

if TYPE_CHECKING:
    from edgecloud.adapters._manifest import AdapterRouting, AdapterScope, AnswerMemory
    from edgecloud.backends import TextBackend
    from edgecloud.common.encoder import SentenceEncoder
    from edgecloud.device._endpoints import Endpoint, EndpointPool
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
    """Cloud tokens spent, for the budget policy: in memory, and written through to the
    escalation log's database when there is one, so that a restarted device keeps what
    it spent in the current hour and day. Times are wall-clock (Unix) for that reason."""

    def __init__(self, store: EscalationLog | None = None, now: float | None = None) -> None:
        self._log = store
        now = time.time() if now is None else now
        self._spent: deque[tuple[float, int]] = deque(
            store.usage(now - 86_400) if store is not None else ()
        )

    def add(self, now: float, tokens: int) -> None:
        self._spent.append((now, tokens))
        if self._log is not None:
            try:
                self._log.add_usage(now, tokens)
            except sqlite3.Error as exc:  # the budget still holds until a restart
                log.warning("cannot record cloud usage in the escalation log: %s", exc)

    def since(self, now: float, seconds: float) -> int:
        while self._spent and now - self._spent[0][0] > 86_400:
            self._spent.popleft()
        return sum(n for t, n in self._spent if now - t <= seconds)


def _load_privacy_detectors(
    router: RouterConfig, policy: PrivacyPolicy
) -> concurrent.futures.Future[None] | None:
    """Build ``device.router.privacy_detectors`` into ``policy`` in a thread: importing
    presidio (spaCy, and torch where installed) takes seconds, which the device's start
    and its event loop should not wait for. A missing library is found here and now
    (a ConfigError with ``privacy_strict``); the future fails if the load does."""
    if not router.privacy_detectors:
        return None
    PrivacyDetectors.check(router.privacy_detectors, strict=router.privacy_strict)
    loading: concurrent.futures.Future[None] = concurrent.futures.Future()

    def load() -> None:
        try:
            policy.detectors = PrivacyDetectors(
                router.privacy_detectors,
                entities=router.privacy_entities,
                strict=router.privacy_strict,
            )
        except BaseException as exc:  # noqa: BLE001 - handed to the first request
            loading.set_exception(exc)
        else:
            loading.set_result(None)

    threading.Thread(target=load, name="edgecloud-privacy", daemon=True).start()
    return loading


@dataclass
class _Round:
    """What one exchange with the cloud came to (filled by ``HybridEngine._ask_cloud``)."""

    kept: int | None = None
    """Characters of the prefix the cloud kept; None until its first event."""
    kept_tokens: int = 0
    """Tokens of the answer once the cloud's verdict was applied."""
    texts: list[str] = field(default_factory=list)
    done: Finish | None = None
    endpoint: Endpoint | None = None
    failure: str | None = None


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
        shadow: shadow checks of confident local answers (``device.shadow``); None: off.
        seed: seeds the replay and shadow sampling (tests).
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
        shadow: DeviceShadowConfig | None = None,
        seed: int | None = None,
    ) -> None:
        self.backend = backend
        self.replay_rate = replay_rate
        self._replay_rng = random.Random(seed)
        self._shadows = ShadowChecks(shadow or DeviceShadowConfig(), seed)
        self.pool = pool
        self.router_cfg = router
        self.cloud_cfg = cloud
        self.log = log
        self.learned = learned
        self._closed = False
        self._scope: tuple[AdapterScope, SentenceEncoder] | None = None
        self.adapter_version: int | None = None
        """The adapter version the backend runs (None: the base model), for records."""
        self._adapter_thresholds: WindowThresholds | None = None
        self._memory: tuple[AnswerMemory, SentenceEncoder] | None = None
        self.usage = _CloudUsage(log)
        self._budget = BudgetPolicy(router.budget_tokens_per_hour, router.budget_tokens_per_day)
        self._privacy = PrivacyPolicy(router.privacy_patterns)
        self._privacy_loading = _load_privacy_detectors(router, self._privacy)
        self.policies: list[Policy] = [
            ForcedRoutePolicy(),
            self._privacy,
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

    def set_adapter_routing(
        self, routing: AdapterRouting, *, encoder: SentenceEncoder | None = None
    ) -> None:
        """Apply what a version swapped in carries: its scope (:meth:`set_adapter_scope`)
        and its calibrated thresholds and answer memory, used for the requests the adapter
        answers (the others keep ``device.router``'s): a confident answer that is not
        what the adapter learned for the nearest prompts is handed to the cloud when it
        ends. The adapter manager calls this at each swap, rollback and restore."""
        self.set_adapter_scope(routing.scope, encoder=encoder)
        cal = routing.calibration
        self._adapter_thresholds = cal.thresholds(self.thresholds) if cal is not None else None
        self._memory = None
        if cal is not None and cal.memory is not None:
            found = self._encoder(cal.memory.encoder, cal.memory.dim, encoder, "answer memory")
            self._memory = (cal.memory, found) if found is not None else None
        self.adapter_version = routing.version

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
        found = self._encoder(scope.encoder, len(scope.weights), encoder, "adapter scope")
        self._scope = (scope, found) if found is not None else None

    def _encoder(
        self, identity: str, dim: int, encoder: SentenceEncoder | None, what: str
    ) -> SentenceEncoder | None:
        """The sentence encoder ``identity`` (``dim`` dimensions) that ``what`` was fitted
        with: ``encoder``, else the learned router's, else the scope's, else the embedded
        default; None (with a warning) when that cannot be loaded or is another one."""
        if encoder is None and self.learned is not None:
            encoder = self.learned[1]
        if encoder is None and self._scope is not None:
            encoder = self._scope[1]
        try:
            if encoder is None:
                from edgecloud.common.encoder import SentenceEncoder

                encoder = SentenceEncoder()
            have = encoder.identity
        except (EdgeCloudError, ImportError, OSError) as exc:
            log.warning("%s ignored (no sentence encoder: %s)", what, exc)
            return None
        if have != identity or encoder.dim != dim:
            log.warning("%s ignored: fitted with encoder %s, this device has %s", what,
                        identity, have)  # fmt: skip
            return None
        return encoder

    @staticmethod
    async def _embedding(
        encoder: SentenceEncoder, text: str, seen: dict[tuple[int, str], list[float]]
    ) -> list[float]:
        """``text``'s embedding, encoded once per request: the scope and the answer memory
        read the same prompt text with the same encoder."""
        key = (id(encoder), text)
        if key not in seen:
            seen[key] = (await asyncio.to_thread(encoder.encode, [text]))[0].tolist()
        return seen[key]

    async def _recall(
        self, prompt: str | Sequence[ChatMessage], seen: dict[tuple[int, str], list[float]]
    ) -> tuple[AnswerMemory, list[float]] | None:
        """The version's answer memory and ``prompt``'s embedding for it (None: no memory)."""
        current = self._memory
        if current is None:
            return None
        memory, encoder = current
        return memory, await self._embedding(encoder, memory.text(prompt_text(prompt)), seen)

    async def _in_scope(
        self, prompt: str | Sequence[ChatMessage], seen: dict[tuple[int, str], list[float]]
    ) -> tuple[float, bool] | None:
        """(the adapter scope's probability for ``prompt``, whether it applies); None:
        no scope is set."""
        current = self._scope
        if current is None:
            return None
        scope, encoder = current
        p = scope.probability(await self._embedding(encoder, scope.text(prompt_text(prompt)), seen))
        return p, p >= scope.threshold

    def _available(self) -> list[Endpoint]:
        return self.pool.available() if self.pool is not None else []

    async def decide(
        self, prompt: str | Sequence[ChatMessage], route: Route | None
    ) -> tuple[Decision, RequestSignals]:
        """The pre-generation decision for ``prompt`` (signals gathered here, policy pure)."""
        text = prompt_text(prompt)
        if self._privacy_loading is not None:
            # the first requests wait (off the loop) for the privacy detectors: never
            # routed with less than the configured checks
            await asyncio.wrap_future(self._privacy_loading)
            self._privacy_loading = None
        n_prompt = await asyncio.to_thread(self.backend.count_tokens, prompt)
        predicted = None
        if self.learned is not None and route is None:
            head, encoder = self.learned
            vec = await asyncio.to_thread(encoder.encode, [text])
            predicted = float(head.predict(vec)[0])
        now = time.time()
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

    def stream(
        self,
        prompt: str | Sequence[ChatMessage],
        params: SamplingParams,
        *,
        route: Route | None = None,
        cancel: CancelScope,
        speculative: int | None = None,
        show_unverified: bool | None = None,
        request_id: str | None = None,
    ) -> AsyncGenerator[Chunk | Finish, None]:
        """The chunks of one request's answer, then one :class:`Finish` (see the module doc).

        Args:
            route: ``"local"`` or ``"cloud"`` forces the route; None lets the policies decide.
            cancel: ends the stream within one token when set.
            speculative: draft length of edge-cloud speculative decoding for an answer the
                cloud gives from its start; None: ``device.cloud.speculative_tokens``
                (for greedy requests).
            show_unverified: None: ``device.router.show_unverified``.
            request_id: the id the request's log lines, cloud calls and records carry;
                None: the one bound by the caller
                (:func:`edgecloud.common.logs.bind_request_id`), else a new one.

        Raises:
            InvalidRequestError: a private request demands the cloud, or speculative
                decoding is asked of a sampled request.
            TransportError: a request that demands the cloud gets no answer from it.
        """
        rid = request_id or current_request_id() or new_request_id()
        answer = self._answer(prompt, params, route, cancel, speculative, show_unverified)
        return observed(answer, rid, has_cloud=self.pool is not None, forced=route)

    async def _answer(
        self,
        prompt: str | Sequence[ChatMessage],
        params: SamplingParams,
        route: Route | None,
        cancel: CancelScope,
        speculative: int | None,
        show_unverified: bool | None,
    ) -> AsyncGenerator[Chunk | Finish, None]:
        """:meth:`stream`, without the metrics and the request id."""
        t0 = time.perf_counter()
        k = self._draft_length(params, speculative)
        decision, signals = await self.decide(prompt, route)
        if route == "cloud" and decision.route != "cloud":
            if decision.private:
                raise InvalidRequestError(
                    f"the request demands the cloud but must stay on the device: {decision.reason}"
                )
            raise TransportError(f"the request demands the cloud: {decision.reason}")
        signals_out: dict[str, float | int | str | bool] = dict(decision.signals)
        seen: dict[tuple[int, str], list[float]] = {}
        in_scope = await self._in_scope(prompt, seen)
        use_adapter = in_scope is None or in_scope[1]
        if in_scope is not None:
            signals_out["adapter_scope"] = in_scope[0]
            signals_out["adapter_in_scope"] = in_scope[1]
        recalled = await self._recall(prompt, seen) if use_adapter else None
        if recalled is not None:
            memory, vec = recalled
            signals_out["adapter_memory_nearest"] = nearest = memory.nearest(vec)
            if nearest < memory.min_similarity:  # nothing it learned: the base model's
                use_adapter, recalled = False, None
                signals_out["adapter_in_scope"] = False
        if decision.route == "cloud":
            demanded = route == "cloud"
            if k and any(ep.verifies for ep in self._available()):
                signals_out["speculative"] = k
                info = RouteInfo(decision.policy, decision.reason, signals_out)
                part = self._speculate(prompt, params, k, info, cancel, demanded, use_adapter)
            else:
                info = RouteInfo(decision.policy, decision.reason, signals_out)
                part = self._cloud_part(prompt, params, [], 0, info, cancel, demanded, use_adapter)
            async for ev in part:
                yield ev
            return
        info = RouteInfo(decision.policy, decision.reason, signals_out, private=decision.private)
        watch = (
            route is None
            and not decision.private
            and self.pool is not None
            and self._budget.decide(signals) is None
        )
        thresholds = self.thresholds
        if use_adapter and self._adapter_thresholds is not None:
            thresholds = self._adapter_thresholds  # the version's calibration
        monitor = ConfidenceMonitor(thresholds) if watch else None
        show = self.router_cfg.show_unverified if show_unverified is None else show_unverified
        # Local chunks [shown:] are not yet shown to the app: the first holdback_tokens (see
        # RouterConfig), or, when unverified text must not be shown, all of them while a
        # hand-off may still come.
        holdback = 0
        if monitor is not None:
            holdback = self.router_cfg.holdback_tokens if show else params.max_tokens
        local: list[Chunk] = []
        shown = 0
        handoff: Decision | None = None
        finish: Finish | None = None
        async with contextlib.aclosing(
            self._local(prompt, params, "", cancel, use_adapter)
        ) as events:
            async for ev in events:
                if isinstance(ev, Finish):
                    finish = ev
                    break
                local.append(ev)
                if len(local) > holdback:
                    for c in local[shown:]:
                        yield c
                    shown = len(local)
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
        if (
            handoff is None
            and use_adapter
            and monitor is not None
            and monitor.fired is None
            and finish is not None
            and finish.reason == "stop"
            and self._available()
            and recalled is not None
            and recalled[0].check_answers
            and not recalled[0].consistent(recalled[1], "".join(c.text for c in local))
        ):
            handoff = Decision(
                "cloud", "answer-memory",
                "the answer is not what the adapter learned for the nearest questions",
                signals={"local_tokens": len(local)},
            )  # fmt: skip
        if handoff is None:
            for c in local[shown:]:
                yield c
            assert finish is not None
            if monitor is not None and monitor.fired is None and finish.reason == "stop":
                self._confident(prompt, params, local, info, signals, t0, use_adapter)
            yield Finish(finish.reason, finish.prompt_tokens, finish.completion_tokens, route=info)
            return
        info = RouteInfo(handoff.policy, handoff.reason, dict(handoff.signals))
        async for ev in self._cloud_part(
            prompt, params, local, shown, info, cancel, False, use_adapter
        ):
            yield ev

    def _confident(
        self,
        prompt: str | Sequence[ChatMessage],
        params: SamplingParams,
        local: Sequence[Chunk],
        info: RouteInfo,
        signals: RequestSignals,
        t0: float,
        use_adapter: bool,
    ) -> None:
        """A confident local answer (the monitor watched and did not fire, and the answer
        ended by itself): sample it for a replay record and for a shadow check.

        A checked answer gets the check's record instead of a replay record (an agreement
        is replayed in training, a disagreement must not be); the replay record is
        written only if the check fails.
        """
        replay = self._replay_rng.random() < self.replay_rate
        if self._shadows.sample() and self._may_shadow(signals):
            # The version that answered: another may be swapped in before the cloud replies.
            version = self.adapter_version
            answered_by = version if use_adapter else None  # outside the scope: the base model
            check = self._shadow(prompt, params, local, info, t0, version, answered_by, replay)
            self._shadows.start(check)
            return
        if replay:
            text = "".join(c.text for c in local)
            self._record(prompt, text, "", info, t0, params.stop, "stop", replay=True)

    def _may_shadow(self, signals: RequestSignals) -> bool:
        """Whether a shadow check may start now: a slot is free, an endpoint is up, and
        the cloud budget (``device.router.budget_tokens_*``) is not spent."""
        if self._closed or self._shadows.full() or not self._available():
            return False
        now = time.time()
        spent = replace(
            signals,
            cloud_tokens_last_hour=self.usage.since(now, 3600),
            cloud_tokens_last_day=self.usage.since(now, 86_400),
        )
        return self._budget.decide(spent) is None

    async def _shadow(
        self,
        prompt: str | Sequence[ChatMessage],
        params: SamplingParams,
        local: Sequence[Chunk],
        info: RouteInfo,
        t0: float,
        version: int | None,
        answered_by: int | None,
        replay: bool,
    ) -> None:
        """One shadow check, a background task: ask the cloud the same prompt with the
        same parameters, compare its answer with the device's (:func:`same_answer`), count
        it for ``answered_by`` and record it (``extra["kind"] == "shadow"``, ``agree``,
        and the device's per-token signals, as ``edgecloud router calibrate`` reads them).

        A check that fails or times out is logged and dropped; the replay record the
        answer was sampled for (``replay``), if any, is written then.
        """
        text = "".join(c.text for c in local)
        answered_in = time.perf_counter() - t0  # the replay record's latency, if one is due
        start = time.perf_counter()
        rnd = _Round()
        timeout = self._shadows.config.timeout_s
        try:
            await asyncio.wait_for(self._cloud_answer(prompt, params, rnd), timeout)
        except asyncio.TimeoutError:
            rnd.endpoint, rnd.failure = None, f"no answer within {timeout:g} s"
        except Exception as exc:  # noqa: BLE001 - a background check must never fail anything
            log.warning("shadow check failed unexpectedly: %r", exc)
            rnd.endpoint, rnd.failure = None, repr(exc)
        done = rnd.done if rnd.endpoint is not None else None
        label = "base" if answered_by is None else str(answered_by)
        if done is None or rnd.endpoint is None:
            metrics().shadow_requests.labels("failed", label).inc()
            log.info("shadow check dropped: %s", rnd.failure or "no cloud endpoint answered")
            if replay:
                self._record(prompt, text, "", info, time.perf_counter() - answered_in,
                             params.stop, "stop", replay=True,
                             extra={"adapter_version": version})  # fmt: skip
            return
        self.usage.add(time.time(), done.prompt_tokens + done.completion_tokens)
        cloud = "".join(rnd.texts)
        agree = same_answer(text, cloud)
        self._shadows.count(answered_by, agree)
        metrics().shadow_requests.labels("agree" if agree else "disagree", label).inc()
        tokens = [c for c in local if c.token_id >= 0]
        extra = {
            "kind": "shadow",
            "agree": agree,
            "adapter_version": version,
            "logprobs": [round(c.logprob, 4) for c in tokens],
            "entropies": [round(c.entropy, 4) for c in tokens],
        }
        route = replace(info, endpoint=rnd.endpoint.target, passages=done.passages)
        self._record(prompt, text, cloud, route, start, params.stop, done.reason, extra=extra)

    async def _cloud_answer(
        self, prompt: str | Sequence[ChatMessage], params: SamplingParams, rnd: _Round
    ) -> None:
        """The cloud's own answer to ``prompt`` into ``rnd``, shown to no one."""
        answer = Transcript()
        exchange = self._ask_cloud(
            prompt, params, answer, Emitter(answer), rnd, CancelScope(), verify=False
        )
        async with contextlib.aclosing(exchange) as chunks:
            async for _ in chunks:
                pass

    def shadow_stats(self) -> dict[int | None, ShadowStats]:
        """What the shadow checks found so far, per adapter version that answered (None:
        the base model, which also answers the requests outside an adapter's scope)."""
        return self._shadows.stats()

    async def wait_shadows(self) -> None:
        """Return once the shadow checks in flight now have ended."""
        await self._shadows.wait()

    def _draft_length(self, params: SamplingParams, speculative: int | None) -> int:
        """The speculative draft length for a request (0: no speculative decoding)."""
        if speculative is None:
            return self.cloud_cfg.speculative_tokens if params.temperature == 0 else 0
        if speculative and params.temperature > 0:
            raise InvalidRequestError(
                "speculative decoding gives the cloud's greedy answer: it needs temperature 0"
            )
        return speculative

    async def _cloud_part(
        self,
        prompt: str | Sequence[ChatMessage],
        params: SamplingParams,
        local: Sequence[Chunk],
        shown: int,
        info: RouteInfo,
        cancel: CancelScope,
        demanded: bool,
        use_adapter: bool = True,
    ) -> AsyncGenerator[Chunk | Finish, None]:
        """Stream the rest of the answer from the cloud; finish locally if it fails.

        ``local`` is the device's answer so far, of which the app has the first ``shown``
        chunks. With ``device.cloud.verify_handoff`` the cloud verifies all of it first:
        what it keeps and the app lacks is shown now, what it rejects and the app has is
        taken back on the next chunk (``Chunk.retracted``). Without, the cloud continues
        the text the app has, and tokens held back from the app are dropped.
        """
        t0 = time.perf_counter()
        answer = Transcript(local)
        n_local = answer.tokens
        verify = (
            bool(local)
            and self.cloud_cfg.verify_handoff
            and all(ep.verifies for ep in self._available())
        )
        if not verify:
            answer.truncate(shown)
        out = Emitter(answer, emitted=shown)
        prefix = answer.text
        logprobs = [c.logprob for c in local if c.token_id >= 0] if verify else []
        rest = max(params.max_tokens - answer.tokens, 1)
        cloud_params = params.model_copy(update={"max_tokens": rest})
        rnd = _Round()
        async for chunk in self._ask_cloud(
            prompt, cloud_params, answer, out, rnd, cancel, verify=verify, logprobs=logprobs
        ):
            yield chunk
        if rnd.kept is None:  # no verdict came: the device's text stands, all of it
            rnd.kept_tokens = answer.tokens
            for chunk in out.emit():
                yield chunk
        extra: dict[str, Any] = {}
        if verify and rnd.kept is not None:
            # What the cloud would not keep of the device's text: a training signal.
            extra = {"kept_prefix_chars": rnd.kept, "rejected_prefix": prefix[rnd.kept :]}
        done = rnd.done if rnd.endpoint is not None else None
        if done is not None:
            self.usage.add(time.time(), done.prompt_tokens + done.completion_tokens)
        route = replace(
            info, escalated=True, local_tokens_before_handoff=rnd.kept_tokens,
            rejected_local_tokens=n_local - rnd.kept_tokens,
            endpoint=rnd.endpoint.target if rnd.endpoint is not None else None,
            passages=done.passages if done is not None else (),
        )  # fmt: skip
        async for ev in self._conclude(
            prompt, params, answer, out, route, done, rnd.failure, t0, prefix,
            "".join(rnd.texts), extra, cancel, demanded, use_adapter,
        ):  # fmt: skip
            yield ev

    async def _speculate(
        self,
        prompt: str | Sequence[ChatMessage],
        params: SamplingParams,
        k: int,
        info: RouteInfo,
        cancel: CancelScope,
        demanded: bool,
        use_adapter: bool,
    ) -> AsyncGenerator[Chunk | Finish, None]:
        """Edge-cloud speculative decoding of a greedy answer.

        Each round the device drafts up to ``k`` greedy tokens after the answer so far, and
        the cloud verifies them in one forward pass (``verify_prefix``, ``max_tokens=1``):
        the part it keeps and the one token it adds join the answer. The answer is the
        cloud's own greedy answer, from one cloud pass per round instead of one per token.
        Every chunk reads ``source="cloud"``: the cloud verified or wrote all of it (drafted
        tokens keep the device's token id and signals; the cloud sends none for them).
        Stop sequences are found here, over the whole answer: the cloud sees only the
        token it adds each round.
        """
        t0 = time.perf_counter()
        answer = Transcript()
        out = Emitter(answer, stops=params.stop)
        one = params.model_copy(update={"max_tokens": 1})
        drafted = accepted = passes = 0
        first: Finish | None = None
        last: _Round | None = None
        failure: str | None = None
        reason: FinishReason | None = None
        stalled = False
        while reason is None and not cancel.is_set():
            left = params.max_tokens - answer.tokens
            if left <= 0:
                reason = "length"
                break
            draft = None
            if not stalled:
                draft = await self._draft(prompt, params, min(k, left - 1), answer.text,
                                          cancel, use_adapter)  # fmt: skip
            tokens_before = answer.tokens
            rnd = _Round()
            # Without a draft (the device cannot draft, or drafting stalled), the cloud
            # streams the rest of its answer.
            ask = (
                self._ask_cloud(prompt, one, answer, out, rnd, cancel, draft=draft, verify=True)
                if draft is not None
                else self._ask_cloud(prompt, params.model_copy(update={"max_tokens": left}),
                                     answer, out, rnd, cancel, verify=False)
            )  # fmt: skip
            async for chunk in ask:
                yield chunk
            if rnd.kept is None:  # no endpoint answered, or the caller cancelled
                failure = rnd.failure
                break
            passes += 1 if draft is not None else max(len(rnd.texts), 1)
            if draft is not None:
                drafted += sum(1 for c in draft if c.token_id >= 0)
                accepted += max(rnd.kept_tokens - tokens_before, 0)
            # No progress (the cloud took back as much as it added, as when its tokens of the
            # answer do not split where the draft's do, or when it rejects its own token of
            # the round before because reduced precision breaks a near-tie differently in a
            # prefill): drafting would go round in circles, so the cloud streams the rest.
            stalled = answer.tokens <= tokens_before
            if rnd.done is None or rnd.endpoint is None:
                failure = rnd.failure  # it failed after its verdict: what it verified stands
                continue
            last, first = rnd, first or rnd.done
            self.usage.add(time.time(), rnd.done.prompt_tokens + rnd.done.completion_tokens)
            if out.stopped or rnd.done.reason != "length" or draft is None:
                reason = "stop" if out.stopped else rnd.done.reason
        done = None
        if reason is not None and first is not None and last is not None:
            done = Finish(reason, first.prompt_tokens, 0, last.done.passages if last.done else ())
        route = replace(
            info, escalated=True,
            endpoint=last.endpoint.target if last is not None and last.endpoint else None,
            passages=done.passages if done is not None else (),
            draft_tokens=drafted, draft_accepted=accepted, cloud_passes=passes,
        )  # fmt: skip
        stats = {"draft": k, "drafted": drafted, "accepted": accepted, "passes": passes}
        async for ev in self._conclude(
            prompt, params, answer, out, route, done, failure, t0, "", answer.text,
            {"speculative": stats}, cancel, demanded, use_adapter,
        ):  # fmt: skip
            yield ev

    async def _draft(
        self,
        prompt: str | Sequence[ChatMessage],
        params: SamplingParams,
        k: int,
        prefix: str,
        cancel: CancelScope,
        use_adapter: bool,
    ) -> list[Chunk] | None:
        """Up to ``k`` greedy device tokens after ``prefix``, as cloud chunks to be (they
        join the answer only as far as the cloud accepts them); None when the device
        cannot draft (its context is full, say)."""
        if k <= 0:
            return []
        draft: list[Chunk] = []
        draft_params = params.model_copy(update={"max_tokens": k})
        try:
            async with contextlib.aclosing(
                self._local(prompt, draft_params, prefix, cancel, use_adapter)
            ) as events:
                async for ev in events:
                    if isinstance(ev, Finish):
                        break
                    draft.append(replace(ev, source="cloud"))
        except EdgeCloudError as exc:
            log.info("the device cannot draft (%s): the cloud answers the rest alone", exc)
            return None
        return draft

    async def _ask_cloud(
        self,
        prompt: str | Sequence[ChatMessage],
        params: SamplingParams,
        answer: Transcript,
        out: Emitter,
        rnd: _Round,
        cancel: CancelScope,
        *,
        verify: bool,
        draft: Sequence[Chunk] = (),
        logprobs: Sequence[float] = (),
    ) -> AsyncGenerator[Chunk, None]:
        """One exchange with the cloud: it continues ``answer`` plus ``draft`` (verifying
        that text first when ``verify``); the answer follows its verdict and chunks, and
        the app's chunks follow the answer. Fills ``rnd``.

        Endpoints are tried in order, skipping those whose breaker is open; one that fails
        before its first event makes way for the next. After that, the answer has moved
        on, and a failure ends the exchange.
        """
        prefix = answer.text + "".join(c.text for c in draft)
        for ep in self._available():
            if verify and not ep.verifies:
                continue
            if not ep.breaker.allow(time.monotonic()):
                continue
            exchange = self._from_endpoint(
                ep,
                prompt,
                params,
                prefix,
                cancel,
                verify=verify and bool(prefix),
                logprobs=logprobs,
            )
            try:
                async with contextlib.aclosing(exchange) as events:
                    async for ev in events:
                        if rnd.kept is None:
                            kept = ev.kept if isinstance(ev, Retraction) else len(prefix)
                            rnd.kept = min(max(kept, 0), len(prefix))
                            answer.extend(draft)
                            answer.retract(len(answer.text) - rnd.kept)
                            rnd.kept_tokens = answer.tokens
                            for chunk in out.emit():
                                yield chunk
                            if isinstance(ev, Retraction):
                                continue
                        if isinstance(ev, Retraction):
                            raise TransportError(f"{ep.target} retracted after it began answering")
                        if isinstance(ev, Finish):
                            rnd.done = ev
                            break
                        rnd.texts.append(ev.text)
                        answer.add(Chunk(ev.text, ev.token_id, ev.logprob, ev.entropy, "cloud", 0))
                        for chunk in out.emit():
                            yield chunk
            except EdgeCloudError as exc:
                ep.breaker.record_failure(time.monotonic())
                rnd.failure = f"{ep.target}: {exc}"
                log.warning("cloud endpoint %s failed: %s", ep.target, exc)
                if rnd.kept is not None or cancel.is_set():
                    break  # the answer moved on: another endpoint would start over
                continue
            ep.breaker.record_success()
            rnd.endpoint = ep
            break

    async def _conclude(
        self,
        prompt: str | Sequence[ChatMessage],
        params: SamplingParams,
        answer: Transcript,
        out: Emitter,
        route: RouteInfo,
        done: Finish | None,
        failure: str | None,
        t0: float,
        local_partial: str,
        cloud_text: str,
        extra: Mapping[str, Any],
        cancel: CancelScope,
        demanded: bool,
        use_adapter: bool,
    ) -> AsyncGenerator[Chunk | Finish, None]:
        """End a cloud answer: as the cloud finished it (``done``), cancelled, or, when the
        cloud failed, on the device after the answer so far (``route.fallback``); a
        request that demanded the cloud gets the error instead."""
        if done is not None or cancel.is_set():
            for chunk in out.emit(final=True):
                yield chunk
            route = replace(route, retracted_chars=out.retracted)
            if done is None:  # the caller cancelled: not a cloud failure
                yield Finish("cancelled", 0, answer.tokens, route=route)
                return
            self._record(prompt, local_partial, cloud_text, route, t0, params.stop, done.reason,
                         extra=extra)  # fmt: skip
            yield Finish(done.reason, done.prompt_tokens, answer.tokens, done.passages, route)
            return
        if demanded:
            why = failure or "none available"
            raise TransportError(f"the request demands the cloud and no endpoint answered ({why})")
        fallback = f"cloud failed ({failure or 'no endpoint available'}); finished on the device"
        rest = max(params.max_tokens - answer.tokens, 1)
        finish: Finish | None = None
        local_params = params.model_copy(update={"max_tokens": rest})
        async with contextlib.aclosing(
            self._local(prompt, local_params, answer.text, cancel, use_adapter)
        ) as events:
            async for ev in events:
                if isinstance(ev, Finish):
                    finish = ev
                    break
                answer.add(ev)
                for chunk in out.emit():
                    yield chunk
                # A stop sequence may complete across the cloud's text and the device's.
                if out.stopped:
                    n_prompt = await asyncio.to_thread(self.backend.count_tokens, prompt)
                    finish = Finish("stop", n_prompt, 0)
                    break
        assert finish is not None
        for chunk in out.emit(final=True):
            yield chunk
        route = replace(route, fallback=fallback, retracted_chars=out.retracted)
        self._record(prompt, local_partial, cloud_text, route, t0, params.stop, finish.reason,
                     extra=extra)  # fmt: skip
        yield Finish(finish.reason, finish.prompt_tokens, answer.tokens, route=route)

    async def _from_endpoint(
        self,
        ep: Endpoint,
        prompt: str | Sequence[ChatMessage],
        params: SamplingParams,
        prefix: str,
        cancel: CancelScope,
        *,
        verify: bool = False,
        logprobs: Sequence[float] = (),
    ) -> AsyncGenerator[Chunk | Finish | Retraction, None]:
        timeout = self.cloud_cfg.timeout_s
        if verify:
            agen = ep.client.stream(prompt, params, timeout_s=timeout, assistant_prefix=prefix,
                                    verify_prefix=True, prefix_logprobs=logprobs)  # fmt: skip
        else:  # the keywords are left out: a client older than verification lacks them
            agen = ep.client.stream(prompt, params, timeout_s=timeout, assistant_prefix=prefix)
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
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        if self.log is None or route.private:
            return
        # The stop sequences and finish reason tell a trainer where the answer ended.
        fields: dict[str, Any] = {
            "passages": [_passage(p) for p in route.passages],
            "stop": list(stop),
            "finish": finish,
            **(extra or {}),
        }
        if replay:
            fields["kind"] = "replay"  # a confident local answer, not an escalation
        # A record written after the answer (a shadow check) names the version that gave
        # it in ``extra``; the others were given by the version running now.
        version = fields.pop("adapter_version", self.adapter_version)
        if version is not None:
            fields["adapter_version"] = version
        if not isinstance(prompt, str):
            fields["messages"] = [m.model_dump() for m in prompt]
        if route.endpoint:
            fields["endpoint"] = route.endpoint
        if route.fallback:
            fields["fallback"] = route.fallback
        if (request_id := current_request_id()) is not None:
            fields.setdefault("request_id", request_id)  # finds the request in the logs
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
                    extra=fields,
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
            stored = self.log.acknowledge(acked)
            metrics().records_uploaded.inc(stored)
            return stored
        return 0

    async def aclose(self) -> None:
        """Cancel the shadow checks in flight, close the cloud endpoints and the escalation
        log; later calls do nothing.

        The local backend is not closed: the engine was handed it and does not own it.
        """
        if self._closed:
            return
        self._closed = True
        try:
            await self._shadows.aclose()  # before the endpoints they use
            if self.pool is not None:
                await self.pool.close()
        finally:
            if self.log is not None:
                self.log.close()


def _passage(p: Passage) -> dict[str, Any]:
    return {"text": p.text, "source": p.source, "score": p.score}
