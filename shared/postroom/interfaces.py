"""The reactor, typed by what Postroom uses of it: small Protocols instead of ``Any``.

Twisted declares its reactor interfaces (``IReactorTime``...) with zope.interface, whose
methods have no ``self``: mypy reads them wrongly without the mypy-zope plugin (which
pins mypy versions tightly), and a test's ``task.Clock`` is not a nominal subclass. These
Protocols are structural instead: the global reactor, ``task.Clock`` and
``MemoryReactorClock`` all satisfy the ones they implement, and a test fake only needs
the methods named here. Ask for the narrowest one that covers what the code calls
(docs/hacking.md, "Types").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar, cast

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
    from twisted.python.threadpool import ThreadPool

_P = ParamSpec("_P")
_R = TypeVar("_R")


class DelayedCall(Protocol):
    """What ``callLater`` returns: a timer that can be cancelled, pushed back or asked."""

    def active(self) -> bool: ...

    def cancel(self) -> None: ...

    def reset(self, secondsLater: float) -> None: ...

    def getTime(self) -> float: ...


class ReactorTime(Protocol):
    """Time and timers: what idle timeouts, back-off and deadlines need (``task.Clock``)."""

    def seconds(self) -> float: ...

    def callLater(self, delay: float, callable: Callable[..., object],
                  *args: object, **kw: object) -> DelayedCall: ...


class ReactorThreads(ReactorTime, Protocol):
    """Time plus the way back from a worker thread: what a pool hop needs."""

    def callFromThread(self, callable: Callable[..., object],
                       *args: object, **kw: object) -> None: ...


class ReactorEvents(ReactorThreads, Protocol):
    """Also the start-up and shutdown triggers: what owns resources closed at shutdown."""

    def addSystemEventTrigger(self, phase: str, eventType: str,
                              callable: Callable[..., object], *args: object,
                              **kw: object) -> Any: ...

    def removeSystemEventTrigger(self, triggerID: Any) -> None: ...

    def callWhenRunning(self, callable: Callable[..., object],
                        *args: object, **kw: object) -> Any: ...


class Reactor(ReactorEvents, Protocol):
    """The whole process reactor: what the runtime and the supervisor run and stop.

    Listening and dialling go through Twisted's endpoints, which take it untyped.
    """

    def run(self) -> None: ...

    def stop(self) -> None: ...

    def spawnProcess(self, processProtocol: Any, executable: str | bytes,
                     args: Any, env: Any = None, path: Any = None, uid: Any = None,
                     gid: Any = None, usePTY: bool = False,
                     childFDs: Any = None) -> Any: ...


def defer_to_pool(reactor: ReactorThreads, pool: ThreadPool, fn: Callable[_P, _R],
                  *args: _P.args, **kwargs: _P.kwargs) -> Deferred[_R]:
    """``deferToThreadPool`` for a reactor typed by the Protocols above.

    Twisted types its first argument with a zope interface, which a structural Protocol
    cannot name; the bridge is made here once rather than cast at every call.
    """
    return deferToThreadPool(cast("IReactorFromThreads", reactor), pool, fn, *args, **kwargs)


def global_reactor() -> Reactor:
    """Twisted's global reactor (installed by this first import), typed by the Protocols.

    For collaborators whose ``reactor`` argument defaults to it; tests pass their own.
    """
    from twisted.internet import reactor

    return reactor


def twisted_clock(clock: ReactorTime) -> IReactorTime:
    """The same clock, named by Twisted's zope interface for Twisted's own typed APIs
    (``LoopingCall.clock``, ``Deferred.addTimeout``, ``deferLater``), which a
    structural Protocol cannot satisfy for mypy."""
    return cast("IReactorTime", clock)
