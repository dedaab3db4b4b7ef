"""CPU of one reactor -> db thread -> reactor hand-off, without any SQL (issue 23, SELECT).

``twisted``: ``deferToThreadPool`` on a Twisted ``ThreadPool`` (what ``Database.run_read``
does). ``simplequeue``: one worker thread fed by a ``queue.SimpleQueue``, its result back by
``reactor.callFromThread``. Each run does ``--count`` hops of a function returning at once,
one at a time (as one IMAP session does), and prints the process's CPU per hop. Run the two
kinds alternately (one process each: the reactor cannot restart):

    for i in 1 2 3 4; do for k in twisted simplequeue; do
        .venv/bin/python bench/db_hop_micro.py $k; done; done
"""

from __future__ import annotations

import argparse
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def _nothing() -> int:
    return 1


class _Worker:
    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[defer.Deferred[Any], Callable[[], Any]]] = (
            queue.SimpleQueue())
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            d, fn = self._queue.get()
            try:
                result = fn()
            except Exception as e:  # handed to the caller's Deferred
                reactor.callFromThread(d.errback, e)  # type: ignore[attr-defined]
            else:
                reactor.callFromThread(d.callback, result)  # type: ignore[attr-defined]

    def call(self, fn: Callable[[], Any]) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self._queue.put((d, fn))
        return d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=("twisted", "simplequeue"))
    parser.add_argument("--count", type=int, default=20_000)
    args = parser.parse_args()
    if args.kind == "twisted":
        pool = ThreadPool(minthreads=0, maxthreads=5, name="db")
        pool.start()

        def hop() -> defer.Deferred[Any]:
            return deferToThreadPool(reactor, pool, _nothing)  # type: ignore[arg-type]
    else:
        worker = _Worker()

        def hop() -> defer.Deferred[Any]:
            return worker.call(_nothing)

    async def run() -> None:
        start = _cpu()
        for _ in range(args.count):
            await hop()
        print(f"{args.kind} {(_cpu() - start) / args.count * 1e6:.1f} us CPU per hop", flush=True)
        os._exit(0)  # the thread pool's threads would keep the process alive

    reactor.callWhenRunning(lambda: defer.ensureDeferred(run()))  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined,misc]


if __name__ == "__main__":
    main()
