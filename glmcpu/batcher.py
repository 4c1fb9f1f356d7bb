"""Continuous batching: several requests generate at once on one Model whose KV cache has n_slots
slots (glmcpu.load(..., n_slots=N)), each forward pass computing a row for every one of them.

  b = Batcher(model, prefill_chunk=128, max_queue=8)
  ticket = b.submit(request, on_piece, on_done)   thread-safe; QueueFull when n_slots + max_queue
                                                  requests are already running or waiting
  ticket.cancel()                                 the client went away: its slot is free next step
  b.close()

One worker thread owns the model and runs the loop; ``on_piece(text)`` and ``on_done(error)``
(None, or the exception that ended the request) are called from it. Each step:

  1. waiting requests take free slots, first come first served; a request goes to the free slot
     whose cached tokens share the longest prefix with its prompt (a conversation's next turn
     lands where the last one is cached), else to the least recently used one, and only the
     uncached rest of its prompt is computed;
  2. every running sequence that has a sampled token gets its decode row, and the sequences still
     reading their prompt share a budget of ``prefill_chunk`` prompt tokens, oldest first: a long
     prompt is read over several steps while the others keep streaming, and a short one is read
     whole in the next step (its time to first token is about what it is alone);
  3. one Model.forward_batch for all those rows (each weight matrix read once), then each sequence
     takes the logits of its last row (glmcpu/requests.py Sequence.feed: the same sampling, stop
     strings, penalties, constraints and logprobs as one request alone, bit for bit).

A cancelled request leaves at the start of the next step; an error in one sequence (a grammar
failure, non-finite logits) ends that request only: a failed batched pass is run again one
sequence at a time so that the others keep going.
"""
import collections
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .errors import GlmcpuError
from .requests import Sequence

DEFAULT_PREFILL_CHUNK = 128


def passive_openmp():
    """Make numba's OpenMP threads sleep, not spin, between parallel regions (OMP_WAIT_POLICY=PASSIVE),
    unless the environment says otherwise; only before the threading layer starts (the first forward
    pass), so call it before that. With libgomp's default spinning, a batched server on a 2-core VM
    that shares its cores (the event loop, the sampling threads, other processes) measured forward
    passes 10-60x slower than with passive waiting (benchmarks/results/2026-11-24-server-parallel).
    Returns True when it set it."""
    import numba.np.ufunc.parallel as parallel
    if getattr(parallel, "_is_initialized", True) or {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & set(os.environ):
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


class QueueFull(GlmcpuError):
    """Too many requests are running or waiting."""


class Ticket:
    """A submitted request: ``cancel()`` from any thread."""

    def __init__(self, request, on_piece, on_done):
        self.request, self.on_piece, self.on_done = request, on_piece, on_done
        self.cancelled = threading.Event()
        self.slot = None  # the KV-cache slot, once running

    def cancel(self):
        self.cancelled.set()


class Batcher:
    def __init__(self, model, prefill_chunk=DEFAULT_PREFILL_CHUNK, max_queue=8, feed_threads=None,
                 name="glmcpu-batcher"):
        if not isinstance(prefill_chunk, int) or prefill_chunk < 1:
            raise GlmcpuError(f"prefill_chunk must be a positive number of tokens, got {prefill_chunk!r}")
        if not isinstance(max_queue, int) or max_queue < 0:
            raise GlmcpuError(f"max_queue must be >= 0, got {max_queue!r}")
        self.model, self.prefill_chunk, self.max_queue = model, prefill_chunk, max_queue
        self.n_slots = model.n_slots
        self.waiting = collections.deque()   # tickets not yet in a slot
        self.active = {}                     # slot -> (ticket, Sequence), in admission order
        self.pending = 0                     # running + waiting
        self.last_used = [0] * self.n_slots  # step at which each slot was last released (0: never)
        self.steps = 0
        # steps, prompt_rows, decode_rows, retries, forward_s, feed_s; decode_steps, decode_steps_rows,
        # decode_steps_s: the steps without prompt rows
        self.stats = collections.Counter()
        self.cond = threading.Condition()
        self.closed = False
        # the sequences' sampling (numpy over the vocabulary, mostly outside the GIL) runs on
        # feed_threads threads (default: the model's), the cores being idle between forward passes
        threads = min(feed_threads or getattr(model, "threads", 1), self.n_slots)
        self.pool = ThreadPoolExecutor(threads, name + "-feed") if threads > 1 else None
        self.thread = threading.Thread(target=self._loop, daemon=True, name=name)
        self.thread.start()

    def submit(self, request, on_piece, on_done):
        ticket = Ticket(request, on_piece, on_done)
        with self.cond:
            if self.closed:
                raise GlmcpuError("the batcher is closed")
            if self.pending >= self.n_slots + self.max_queue:
                raise QueueFull(f"{self.pending} requests are running or waiting (slots {self.n_slots}, "
                                f"queue {self.max_queue})")
            self.pending += 1
            self.waiting.append(ticket)
            self.cond.notify()
        return ticket

    def close(self, timeout=30):
        with self.cond:
            self.closed = True
            self.cond.notify()
        self.thread.join(timeout)
        if self.pool is not None:
            self.pool.shutdown(wait=False)

    # ---------------------------------------------------------------- the worker

    def _loop(self):
        while True:
            with self.cond:
                while not self.closed and not self.waiting and not self.active:
                    self.cond.wait()
                if self.closed:
                    break
                admit, gone, keep = [], [], collections.deque()
                free = self.n_slots - len(self.active)
                for t in self.waiting:  # first come first served; a cancelled one just leaves
                    if t.cancelled.is_set():
                        gone.append(t)
                    elif len(admit) < free:
                        admit.append(t)
                    else:
                        keep.append(t)
                self.waiting = keep
            for t in gone:
                t.request.result.finish_reason = "cancelled"
                self._done(t, None)
            try:
                for t in admit:
                    self._admit(t)
                self._step()
            except Exception as e:  # noqa: BLE001 - a bug here ends the running requests, not the server
                for slot, (t, seq) in list(self.active.items()):
                    seq.close()
                    self._release(slot, e)
        for t, seq in list(self.active.values()) + [(t, None) for t in self.waiting]:
            if seq is not None:
                seq.cancel()
            self._done(t, GlmcpuError("the server is shutting down"))

    def _admit(self, ticket):
        ids, req = ticket.request.prompt_ids, ticket.request
        try:
            slot = ticket.slot = self._pick(ids, req.reuse_cache and not req.prompt_logprobs)
            seq = Sequence(self.model, req, slot)
        except Exception as e:  # noqa: BLE001 - a request the model cannot run: its error, not the loop's
            self._done(ticket, e)
            return
        self.active[slot] = (ticket, seq)

    def _pick(self, ids, reuse):
        """The free slot for a prompt: the one sharing its longest prefix, counted only where the
        shared part is at least half of what the slot caches (so that two chats sharing a few leading
        special tokens do not evict each other's turns); else the least recently used slot (an
        empty one first)."""
        def score(s):
            shared = self.model.cached_prefix(ids, s) if reuse else 0
            useful = shared and 2 * shared >= len(self.model.slot_tokens[s])
            return (shared if useful else 0, -self.last_used[s])
        return max((s for s in range(self.n_slots) if s not in self.active), key=score)

    def _step(self):
        for slot, (t, seq) in list(self.active.items()):
            if t.cancelled.is_set():
                seq.cancel()
                self._release(slot, None)
        entries, budget = [], self.prefill_chunk
        for slot, (t, seq) in self.active.items():
            if not seq.prefilling:
                entries.append((slot, seq.next_ids()))
        decode_rows = len(entries)
        for slot, (t, seq) in self.active.items():
            if seq.prefilling and budget > 0:
                ids = seq.next_ids(budget)
                budget -= len(ids)
                entries.append((slot, ids))
        if not entries:
            return
        self.steps += 1
        t0 = time.perf_counter()
        work = [(slot, len(ids), logits) for (slot, ids), logits in zip(entries, self._forward(entries))]
        t1 = time.perf_counter()
        if self.pool is not None and len(work) > 1:
            fed = list(self.pool.map(self._feed, work))  # numpy releases the GIL: the samplers overlap
        else:
            fed = [self._feed(w) for w in work]
        t2 = time.perf_counter()
        with self.cond:
            self.stats.update(steps=1, decode_rows=decode_rows, prompt_rows=self.prefill_chunk - budget,
                              forward_s=t1 - t0, feed_s=t2 - t1)
            if len(entries) == decode_rows:  # a step of decode rows only: the steady-state speed
                self.stats.update(decode_steps=1, decode_steps_rows=decode_rows, decode_steps_s=t2 - t0)
        for slot, pieces, error in fed:
            t, seq = self.active[slot]
            for piece in pieces:
                t.on_piece(piece)
            if error is not None or seq.done:
                self._release(slot, error)

    def _feed(self, work):
        """One sequence takes its logits -> (slot, pieces, error)."""
        slot, n, logits = work
        seq = self.active[slot][1]
        try:
            if isinstance(logits, Exception):
                raise logits
            return slot, seq.feed(n, logits), None
        except Exception as e:  # noqa: BLE001 - this request's error; the others go on
            seq.close()
            return slot, [], e

    def _forward(self, entries):
        """Per entry: the logits of its last row ([vocab]; every row's [n, vocab] for a sequence
        that needs its prompt's log-probabilities), or the exception that entry raised."""
        try:
            return self._rows(entries)
        except Exception as e:  # noqa: BLE001
            if len(entries) == 1:
                return [e]
        with self.cond:
            self.stats.update(retries=1)
        out = []
        for entry in entries:  # find the culprit: the failed pass changed no cache
            try:
                out.append(self._rows([entry])[0])
            except Exception as e:  # noqa: BLE001
                out.append(e)
        return out

    def _rows(self, entries):
        m = self.model
        every = [self.active[slot][1].all_rows for slot, _ in entries]
        if not any(every):
            return list(m.forward_batch(entries))
        # a prompt whose every row's logits are wanted (completions echo with logprobs)
        rows, n = [], 0
        for (slot, ids), all_rows in zip(entries, every):
            rows.extend(range(n, n + len(ids)) if all_rows else [n + len(ids) - 1])
            n += len(ids)
        logits = m._run_rows([(slot, m._ids(ids)) for slot, ids in entries], np.array(rows, np.int64))
        out, r = [], 0
        for (slot, ids), all_rows in zip(entries, every):
            k = len(ids) if all_rows else 1
            out.append(logits[r:r + k] if all_rows else logits[r])
            r += k
        return out

    def _release(self, slot, error):
        t, _ = self.active.pop(slot)
        self.last_used[slot] = self.steps
        self._done(t, error)

    def _done(self, ticket, error):
        with self.cond:
            self.pending -= 1
        try:
            ticket.on_done(error)
        except Exception:  # noqa: BLE001 - a broken callback must not stop the loop
            pass
