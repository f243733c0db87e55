"""Continuous batching for the gguf backend: one model, one llama.cpp context,
many sequences in every decode step.

One engine thread owns the context (llama.cpp is not safe for concurrent use
of one context) and runs the scheduler loop; the event loop only hands
requests in and reads events out:

* **Slots.** The context has ``n_seq_max`` sequences (``seq_id`` 0..n-1),
  each with its own KV cells (``kv_unified`` false: one buffer per sequence,
  so a sequence's attention never spans another's cells) and ``n_ctx_seq``
  cells of context. A request
  holds one slot from admission to its end; requests beyond ``n_seq_max``
  wait in a FIFO queue for a slot, and a slot always has room for the whole
  of its request (prompt + max_tokens are capped to ``n_ctx_seq``), so a
  decode never runs out of cells halfway.
* **A step** is one ``llama_decode`` over one token of every generating
  sequence plus up to ``prefill_chunk`` prompt tokens of the sequences still
  prefilling (oldest first): a long prompt is cut into chunks, so running
  streams keep their pace while a new request catches up.
* **Sampling** is a llama.cpp sampler chain per sequence (logit bias,
  penalties, grammar, top-k/typical/top-p/min-p, temperature, seeded
  distribution, or greedy), run in C; per token, Python only checks the end
  of generation, turns the token into text (an incremental UTF-8 decoder:
  a character split across tokens comes out whole) and applies the stop strings.
* **Prefix cache.** A finished sequence's KV cells stay in its slot with the
  tokens they hold. A new request takes the free slot whose cells share the
  longest prefix with its prompt (else the least recently used one), drops
  the rest (``llama_memory_seq_rm``) and prefills only what is new: the same
  system prompt, or the previous turn of a conversation, is not recomputed.
  A running sequence's cells serve too (``llama_memory_seq_cp`` into the
  new slot) when they hold a longer prefix than any free slot.
  ``cached_tokens`` counts what was reused. Bounded by the context (one
  sequence's cells per slot), evicted least recently used.
* **Cancel.** The loop marks the sequence; the engine drops it before the
  next step and frees its cells (``llama_memory_seq_rm``), then resolves the
  request's ``released`` future, which the backend awaits before the cancel
  is answered. A request cancelled while it waits for a slot is released at
  once.
* **Events** of one step go to the loop in one ``call_soon_threadsafe``.

``call`` runs a function on the engine thread between steps (loading and
freeing the model, embeddings), so every use of llama.cpp happens on it.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import ctypes
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .. import protocol
from ..errors import BackendError
from .base import ChatDone, ChatEvent, StopFilter, TextDelta
from .worker import next_handed_over

log = logging.getLogger(__name__)

T = TypeVar("T")

# llama-cpp-python's own default (Llama.last_n_tokens_size): the penalties'
# window of recent tokens.
PENALTY_LAST_N = 64
DEFAULT_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: a random seed per chain
# The shortest prefix worth copying from a running sequence's cells.
COPY_MIN_TOKENS = 32


@dataclass(frozen=True)
class SamplerSpec:
    """One request's sampling, with create_chat_completion's defaults."""

    temperature: float = 0.2
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int = DEFAULT_SEED
    grammar: str | None = None  # GBNF, root rule "root"
    logit_bias: dict[int, float] = field(default_factory=dict)


class EngineEnd:
    """The last item of every sequence's events."""


_END = EngineEnd()


class EngineFailure:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


# A sequence's life, guarded by its lock: WAITING until admitted (a cancel
# then just marks it CANCELLED: it never runs), RUNNING in a slot, DONE.
WAITING, RUNNING, CANCELLED, DONE = range(4)


class Sequence:
    """One chat request inside the engine.

    Loop side: ``next_item`` (events), ``released`` (resolved once the engine
    holds nothing of it any more). Engine side: everything else.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        prompt: list[int],
        max_new_tokens: int,
        sampler: SamplerSpec,
        stops: tuple[str, ...],
        model: str,
        reuse_prefix: bool = True,
    ) -> None:
        self.loop = loop
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.sampler_spec = sampler
        self.stops = stops
        self.model = model
        self.reuse_prefix = reuse_prefix
        self.lock = threading.Lock()
        self.state = WAITING
        self.cancel_requested = False
        self.items: collections.deque[ChatEvent | EngineFailure | EngineEnd] = collections.deque()
        self.ready = asyncio.Event()
        self.released: asyncio.Future[None] = loop.create_future()
        # Engine-side state, set at admission.
        self.slot: _Slot | None = None
        self.chain: Any = None
        self.n_past = 0  # tokens of this sequence in its KV cells
        self.cached = 0  # of which reused from the prefix cache
        self.last = 0  # the sampled token to decode next
        self.generated: list[int] = []  # sampled tokens, the end-of-generation one excepted
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stop_filter = StopFilter(stops) if stops else None
        self.admitted_at = 0.0

    # ---- loop side ----

    async def next_item(self) -> ChatEvent | EngineFailure | EngineEnd:
        return await next_handed_over(self.items, self.ready)

    def cancel(self) -> bool:
        """Ask the engine to drop this sequence; True when it must be told (it runs)."""
        with self.lock:
            if self.state == WAITING:
                self.state = CANCELLED
                if not self.released.done():
                    self.released.set_result(None)
                return False
            if self.state == RUNNING:
                self.cancel_requested = True
                return True
            return False

    @property
    def prefilling(self) -> bool:
        return self.n_past < len(self.prompt)


@dataclass
class _Slot:
    seq_id: int
    # The tokens whose KV the slot's cells hold, positions 0..len-1.
    tokens: list[int] = field(default_factory=list)
    busy: Sequence | None = None
    last_used: float = 0.0


class _Call:
    def __init__(self, fn: Callable[[], Any], loop: asyncio.AbstractEventLoop) -> None:
        self.fn = fn
        self.future: asyncio.Future[Any] = loop.create_future()


class _Stop:
    pass


class _Wake:
    pass


_WAKE = _Wake()


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass(frozen=True)
class EngineConfig:
    n_seq_max: int = 8
    n_ctx_seq: int = 2048
    prefill_chunk: int = 256
    n_threads: int = 1
    n_threads_batch: int = 2
    kv_unified: bool = False
    prefix_cache: bool = True


class BatchEngine:
    """The engine thread and its scheduler; see the module docstring.

    Use from one event loop: ``submit``/``release`` for chats, ``call`` for
    anything else that touches llama.cpp, ``aclose`` to stop.
    """

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self._inbox: queue.SimpleQueue[Sequence | _Call | _Stop | _Wake] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        # Engine thread only.
        self._llama: Any = None
        self._ctx: Any = None
        self._mem: Any = None
        self._vocab: Any = None
        self._batch: Any = None
        self._batch_capacity = 0
        self._n_vocab = 0
        self._threads_now = 0
        self._slots: list[_Slot] = []
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._running: list[Sequence] = []
        self._piece = ctypes.create_string_buffer(256)
        self._pending: set[Sequence] = set()  # sequences with new items this round
        # Counters for tests and the benchmark (read from any thread).
        self.steps = 0
        self.max_batch_sequences = 0

    # ---- loop side -------------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="gguf-engine", daemon=True)
            self._thread.start()

    async def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` on the engine thread, between steps."""
        if self._closed:
            raise RuntimeError("gguf engine is closed")
        return await self._call(fn)

    async def _call(self, fn: Callable[[], T]) -> T:
        self._ensure_thread()
        job = _Call(fn, asyncio.get_running_loop())
        self._inbox.put(job)
        result: T = await job.future
        return result

    async def kv_positions(self) -> list[int]:
        """The last position each slot's KV cells hold (-1: none), for tests
        and diagnostics."""

        def read() -> list[int]:
            lc = self._llama
            return [lc.llama_memory_seq_pos_max(self._mem, s.seq_id) for s in self._slots]

        return await self.call(read)

    def submit(self, seq: Sequence) -> None:
        if self._closed:
            raise RuntimeError("gguf engine is closed")
        self._ensure_thread()
        self._inbox.put(seq)

    async def release(self, seq: Sequence) -> None:
        """Stop ``seq`` if it still runs and wait until its cells are free."""
        if seq.cancel():
            self._inbox.put(_WAKE)
        await asyncio.shield(seq.released)

    async def aclose(self, final: Callable[[], None] | None = None) -> None:
        """Fail what is left, free the context, run ``final`` (free the model),
        all on the engine thread; then the thread ends."""
        if self._closed:
            return
        # Closed first: a chat submitted from now on is refused, and every one
        # submitted before is in the inbox ahead of the shutdown, which fails it.
        self._closed = True

        def shutdown() -> None:
            self._shutdown()
            if final is not None:
                final()

        if self._thread is not None:
            await self._call(shutdown)
            self._inbox.put(_Stop())
        elif final is not None:
            final()

    # ---- engine thread: setup --------------------------------------------

    def open(self, llama_cpp: Any, model: Any) -> None:
        """Create the context on ``model`` (a llama_model pointer). Engine thread."""
        cfg = self.config
        params = llama_cpp.llama_context_default_params()
        params.n_seq_max = cfg.n_seq_max
        params.kv_unified = cfg.kv_unified
        params.n_ctx = cfg.n_ctx_seq * cfg.n_seq_max
        self._batch_capacity = cfg.prefill_chunk + cfg.n_seq_max
        params.n_batch = self._batch_capacity
        params.n_ubatch = min(512, self._batch_capacity)
        params.n_threads = cfg.n_threads
        params.n_threads_batch = cfg.n_threads_batch
        ctx = llama_cpp.llama_init_from_model(model, params)
        if not ctx:
            raise RuntimeError(
                f"llama.cpp could not create a context of {cfg.n_seq_max} sequences x "
                f"{cfg.n_ctx_seq} tokens: lower n_seq_max or n_ctx"
            )
        self._llama = llama_cpp
        self._ctx = ctx
        self._mem = llama_cpp.llama_get_memory(ctx)
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self._batch = llama_cpp.llama_batch_init(self._batch_capacity, 0, 1)
        self._slots = [_Slot(i) for i in range(cfg.n_seq_max)]

    def _shutdown(self) -> None:
        err = BackendError(protocol.INTERNAL_ERROR, "the gguf model was unloaded")
        for seq in list(self._running):
            self._end(seq, free=True, failure=err)
        for seq in self._waiting:
            self._fail_waiting(seq, err)
        self._waiting.clear()
        self._flush()
        lc = self._llama
        if lc is None:
            return
        lc.llama_batch_free(self._batch)
        lc.llama_free(self._ctx)
        self._ctx = self._batch = self._mem = None

    # ---- engine thread: the loop -----------------------------------------

    def _run(self) -> None:
        while True:
            idle = not self._running and not self._waiting
            try:
                item = self._inbox.get() if idle else self._inbox.get_nowait()
            except queue.Empty:
                item = None
            stop = False
            while item is not None:
                if isinstance(item, _Stop):
                    stop = True
                elif isinstance(item, _Call):
                    self._run_call(item)
                elif isinstance(item, Sequence):
                    self._waiting.append(item)
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    item = None
            if stop:
                self._flush()
                return
            try:
                self._drop_cancelled()
                self._admit()
                if self._running:
                    self._step()
            except Exception as e:  # handed to every running request, never kills the engine
                log.exception("gguf engine step failed")
                for seq in list(self._running):
                    self._end(seq, free=True, failure=e)
            self._flush()

    def _run_call(self, call: _Call) -> None:
        fut = call.future
        try:
            result = call.fn()
        except BaseException as e:
            _resolve(fut, error=e)
        else:
            _resolve(fut, result=result)

    def _drop_cancelled(self) -> None:
        for seq in [s for s in self._running if s.cancel_requested]:
            log.info(
                "gguf sequence %d cancelled after %d tokens",
                seq.slot.seq_id if seq.slot else -1,
                len(seq.generated),
            )
            self._end(seq, free=True, failure=None, cancelled=True)

    def _admit(self) -> None:
        while self._waiting:
            free = [s for s in self._slots if s.busy is None]
            if not free:
                return
            seq = self._waiting.popleft()
            with seq.lock:
                if seq.state != WAITING:
                    continue  # cancelled while it waited: already released
                seq.state = RUNNING
            try:
                self._start(seq, free)
            except Exception as e:
                self._end(seq, free=True, failure=e)

    def _start(self, seq: Sequence, free: list[_Slot]) -> None:
        lc = self._llama
        limit = len(seq.prompt) - 1  # the last prompt token is always decoded: its logits

        def shared(slot: _Slot) -> int:
            if not seq.reuse_prefix:
                return 0
            return min(common_prefix(slot.tokens, seq.prompt), limit)

        best = max(free, key=lambda s: (shared(s), -s.last_used))
        reuse = shared(best)
        if reuse == 0:
            best = min(free, key=lambda s: s.last_used)  # the least recently used
        # A running sequence may hold a longer prefix (the same system prompt
        # sent twice at once): its cells are copied into the least recently
        # used free slot, worth it past a few tokens (a copy moves a whole
        # sequence's buffer when the sequences have one each).
        donor = max((s for s in self._slots if s.busy is not None), key=shared, default=None)
        if donor is not None and shared(donor) >= reuse + COPY_MIN_TOKENS:
            best = min(free, key=lambda s: s.last_used)
            reuse = shared(donor)
            lc.llama_memory_seq_rm(self._mem, best.seq_id, -1, -1)
            lc.llama_memory_seq_cp(self._mem, donor.seq_id, best.seq_id, -1, -1)
            best.tokens = list(donor.tokens)
        if reuse < len(best.tokens):
            lc.llama_memory_seq_rm(self._mem, best.seq_id, reuse if reuse > 0 else -1, -1)
        del best.tokens[reuse:]
        best.busy = seq
        seq.slot = best
        seq.n_past = seq.cached = reuse
        seq.chain = self._make_chain(seq.sampler_spec)
        seq.admitted_at = time.monotonic()
        self._running.append(seq)

    def _make_chain(self, spec: SamplerSpec) -> Any:
        lc = self._llama
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        try:
            if spec.logit_bias:
                biases = (lc.llama_logit_bias * len(spec.logit_bias))()
                for i, (token, bias) in enumerate(spec.logit_bias.items()):
                    biases[i].token = token
                    biases[i].bias = bias
                lc.llama_sampler_chain_add(
                    chain,
                    lc.llama_sampler_init_logit_bias(self._n_vocab, len(spec.logit_bias), biases),
                )
            if (spec.repeat_penalty, spec.frequency_penalty, spec.presence_penalty) != (
                1.0,
                0.0,
                0.0,
            ):
                lc.llama_sampler_chain_add(
                    chain,
                    lc.llama_sampler_init_penalties(
                        self._n_vocab,
                        PENALTY_LAST_N,
                        spec.repeat_penalty,
                        spec.frequency_penalty,
                        spec.presence_penalty,
                    ),
                )
            if spec.grammar is not None:
                grammar = lc.llama_sampler_init_grammar(self._vocab, spec.grammar.encode(), b"root")
                if not grammar:
                    raise BackendError(
                        protocol.INVALID_PARAMS,
                        "invalid params: llama.cpp could not parse the response_format grammar",
                        {"field": "response_format"},
                    )
                lc.llama_sampler_chain_add(chain, grammar)
            if spec.temperature < 0:
                lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(spec.seed))
            elif spec.temperature == 0:
                lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
            else:
                lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_k(spec.top_k))
                if spec.typical_p < 1.0:
                    lc.llama_sampler_chain_add(
                        chain, lc.llama_sampler_init_typical(spec.typical_p, 1)
                    )
                lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(spec.top_p, 1))
                lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_min_p(spec.min_p, 1))
                lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(spec.temperature))
                lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(spec.seed))
        except BaseException:
            lc.llama_sampler_free(chain)
            raise
        return chain

    def _step(self) -> None:
        lc = self._llama
        batch = self._batch
        n = 0
        outputs: list[tuple[Sequence, int]] = []
        decoding = [s for s in self._running if not s.prefilling]
        for seq in decoding:
            assert seq.slot is not None
            batch.token[n] = seq.last
            batch.pos[n] = seq.n_past
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = seq.slot.seq_id
            batch.logits[n] = 1
            outputs.append((seq, n))
            n += 1
        budget = self.config.prefill_chunk
        fed: list[tuple[Sequence, int]] = []
        for seq in self._running:
            if budget <= 0:
                break
            if not seq.prefilling:
                continue
            assert seq.slot is not None
            take = min(budget, len(seq.prompt) - seq.n_past)
            sid = seq.slot.seq_id
            for i in range(seq.n_past, seq.n_past + take):
                batch.token[n] = seq.prompt[i]
                batch.pos[n] = i
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = sid
                batch.logits[n] = 0
                n += 1
            budget -= take
            fed.append((seq, take))
            if seq.n_past + take == len(seq.prompt):
                batch.logits[n - 1] = 1
                outputs.append((seq, n - 1))
        batch.n_tokens = n
        threads = self.config.n_threads_batch if fed else self.config.n_threads
        if threads != self._threads_now:
            lc.llama_set_n_threads(self._ctx, self.config.n_threads, threads)
            self._threads_now = threads
        rc = lc.llama_decode(self._ctx, batch)
        self.steps += 1
        self.max_batch_sequences = max(self.max_batch_sequences, len(decoding) + len(fed))
        if rc != 0:
            err = BackendError(
                protocol.INTERNAL_ERROR,
                f"llama_decode failed ({rc}) on a batch of {n} tokens",
            )
            for seq in {s for s, _ in outputs} | {s for s, _ in fed}:
                self._end(seq, free=True, failure=err)
            return
        for seq, take in fed:
            assert seq.slot is not None
            seq.slot.tokens.extend(seq.prompt[seq.n_past : seq.n_past + take])
            seq.n_past += take
        for seq in decoding:
            assert seq.slot is not None
            seq.slot.tokens.append(seq.last)
            seq.n_past += 1
        for seq, index in outputs:
            token = lc.llama_sampler_sample(seq.chain, self._ctx, index)
            self._on_token(seq, token)

    def _on_token(self, seq: Sequence, token: int) -> None:
        lc = self._llama
        if lc.llama_vocab_is_eog(self._vocab, token):
            self._finish(seq, "stop")
            return
        seq.generated.append(token)
        text = seq.decoder.decode(self._token_bytes(token))
        stop = seq.stop_filter
        if stop is not None:
            text = stop.feed(text)
        if text:
            self._emit(seq, TextDelta(text))
        if stop is not None and stop.stopped:
            self._finish(seq, "stop")
        elif len(seq.generated) >= seq.max_new_tokens or seq.n_past + 1 > self.config.n_ctx_seq:
            self._finish(seq, "length")
        else:
            seq.last = token

    def _token_bytes(self, token: int) -> bytes:
        """The bytes of ``token`` (special tokens as nothing, as llama-cpp-python
        streams them); a piece can be part of a UTF-8 character."""
        lc = self._llama
        size = lc.llama_token_to_piece(self._vocab, token, self._piece, len(self._piece), 0, False)
        if size < 0:  # the buffer is too small: -size is what it needs
            self._piece = ctypes.create_string_buffer(-size)
            size = lc.llama_token_to_piece(
                self._vocab, token, self._piece, len(self._piece), 0, False
            )
        return self._piece.raw[: max(size, 0)]

    def _finish(self, seq: Sequence, reason: str) -> None:
        tail = seq.decoder.decode(b"", final=True)
        stop = seq.stop_filter
        if stop is not None:
            tail = stop.feed(tail)  # "" once a stop string was seen
            if not stop.stopped:
                tail += stop.flush()
        if tail:
            self._emit(seq, TextDelta(tail))
        usage = protocol.Usage(
            input_tokens=len(seq.prompt),
            output_tokens=len(seq.generated),
            cached_tokens=seq.cached,
        )
        self._emit(seq, ChatDone(usage=usage, finish_reason=reason, model=seq.model))
        self._end(seq, free=False, failure=None)

    def _end(
        self,
        seq: Sequence,
        free: bool,
        failure: BaseException | None,
        cancelled: bool = False,
    ) -> None:
        """Take ``seq`` out of its slot (its cells freed, or kept for the prefix
        cache) and end its events."""
        lc = self._llama
        slot = seq.slot
        if slot is not None:
            if free:
                lc.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
                slot.tokens.clear()
            slot.busy = None
            slot.last_used = time.monotonic()
            seq.slot = None
        if seq.chain is not None:
            lc.llama_sampler_free(seq.chain)
            seq.chain = None
        if seq in self._running:
            self._running.remove(seq)
        with seq.lock:
            seq.state = DONE
        if failure is not None:
            self._emit(seq, EngineFailure(failure))
        if not cancelled:
            self._emit(seq, _END)
        self._pending.add(seq)
        _resolve(seq.released)

    def _fail_waiting(self, seq: Sequence, err: BaseException) -> None:
        with seq.lock:
            if seq.state != WAITING:
                return
            seq.state = DONE
        self._emit(seq, EngineFailure(err))
        self._emit(seq, _END)
        _resolve(seq.released)

    def _emit(self, seq: Sequence, item: ChatEvent | EngineFailure | EngineEnd) -> None:
        seq.items.append(item)
        self._pending.add(seq)

    def _flush(self) -> None:
        """Wake the consumers of this round's events: one hand-over per loop."""
        if not self._pending:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[Sequence]] = {}
        for seq in self._pending:
            by_loop.setdefault(seq.loop, []).append(seq)
        self._pending = set()
        for loop, seqs in by_loop.items():
            try:
                loop.call_soon_threadsafe(_wake, seqs)
            except RuntimeError:
                pass  # the loop is closed (process exit): nobody is listening


def _wake(seqs: list[Sequence]) -> None:
    for seq in seqs:
        seq.ready.set()


def _resolve(
    fut: asyncio.Future[Any], result: Any = None, error: BaseException | None = None
) -> None:
    """Settle a loop future from the engine thread."""

    def settle() -> None:
        if fut.done():
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)

    try:
        fut.get_loop().call_soon_threadsafe(settle)
    except RuntimeError:
        pass  # the loop is closed (process exit): nobody waits
