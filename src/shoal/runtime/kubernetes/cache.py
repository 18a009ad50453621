"""What the control loop reads, kept in memory by watches (informers).

An ``Informer`` holds every object of one kind (optionally those matching a
label selector): it lists them once, then watches from the list's
resourceVersion, applying each event.  A watch that ends (the server's
timeout) or breaks (the connection drops, the server restarts) is resumed
from the last resourceVersion it saw, bookmarks included; only when the
server answers 410 Gone (that version is too old for it) does the informer
list again.  Errors back off (0.5 s doubling to 10 s), never spin.

``Cache`` groups the informers of the watched kinds and answers ``get`` and
``list`` for them once they have listed; ``CachedKube`` is the ``Kube`` seam
with those reads served from memory and everything else sent to the API
server.  What the loop writes is applied to the cache from the server's
answer (the object as stored, with its new resourceVersion), and a bind marks
the pod bound, so the loop never reads back an object older than its own
last write.  Objects only move forward: an event or an answer older than
what is held (by resourceVersion) is ignored, and a deleted object leaves a
tombstone so that a late answer cannot bring it back.  A write that the
server refuses with 409 (someone changed the object since it was read) re-
reads that object into the cache before the error goes on, so the next pass
decides on the object as it now is; the fence itself is the server's.

Objects are shared, not copied: callers must treat what the cache returns as
read-only (every write builds a new body).  To keep memory small with
thousands of jobs, Pods and Nodes are trimmed to what the loop reads of them
(``trim_pod``, ``trim_node``) and ``managedFields`` are dropped everywhere;
a trimmed object is never written back.

Each informer also keeps a journal of the keys it changed, so that a reader
that keeps its own records of the objects (the store's job records) can bring
them up to date with the objects changed since it last looked
(``Cache.changes``), instead of going through thousands of them on every
pass.  A relist, or a journal grown past twice the objects held, starts a new
journal: a reader whose mark is older reads everything again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from shoal.errors import ConflictError, ShoalError, UnavailableError
from shoal.runtime.kubernetes.client import Body, Keys, Kube

__all__ = ["Cache", "CachedKube", "Informer", "Watched", "matches", "trim_node", "trim_pod"]

log = logging.getLogger("shoal.operator")

Key = tuple[str, str]
"""``(namespace, name)``; the namespace is "" for cluster-scoped kinds."""
Bodies = list[Body]

WATCH_TIMEOUT_S = 300.0
_BACKOFF_S = (0.5, 10.0)


class _Miss:
    """The cache cannot answer: ask the API server."""


MISS = _Miss()


@dataclass(frozen=True)
class Watched:
    """One informer: a kind and the label selector its objects match.

    ``complement``: the selector of another informer of the same kind that,
    with this one, holds every object of the kind (Shoal's pods and the
    others), so that a read of the whole kind can be answered from both.
    ``index``: a label whose values the informer indexes (``Cache.labelled``
    answers "the objects whose label is this" without a scan); every object
    that carries it must match ``labels`` (Shoal's pod-uid label comes with
    its job label).
    ``whole``: keep the objects as the server sends them (but ``managedFields``),
    not trimmed to what the control loop reads (the serving loop reads a
    replica pod's IP and Ready condition).
    """

    kind: str
    labels: str = ""
    complement: str | None = None
    index: str = ""
    whole: bool = False


def key_of(body: Body) -> Key:
    meta = body.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def version_of(body: Body) -> int:
    """The resourceVersion as a number (etcd's revision; 0 when absent or not a number)."""
    text = str((body.get("metadata") or {}).get("resourceVersion") or "0")
    return int(text) if text.isdigit() else 0


def _lean_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if k != "managedFields"}


def trim_pod(pod: Body) -> Body:
    """What the loop reads of a Pod: names, labels, node, requests, phase and exit."""
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    return {
        "apiVersion": pod.get("apiVersion", "v1"), "kind": "Pod",
        "metadata": _lean_metadata(pod.get("metadata") or {}),
        "spec": {
            **{k: spec[k] for k in ("nodeName", "schedulerName") if k in spec},
            "containers": [{"name": c.get("name"), "resources": c.get("resources") or {}}
                           for c in spec.get("containers") or []],
        },
        "status": {
            **{k: status[k] for k in ("phase", "message", "reason") if k in status},
            "containerStatuses": [{"name": c.get("name"), "state": c.get("state") or {}}
                                  for c in status.get("containerStatuses") or []],
        },
    }


def trim_node(node: Body) -> Body:
    """What the loop reads of a Node: labels, taints, schedulability, allocatable, readiness.

    Condition timestamps are left out, so a heartbeat that changes nothing
    else is no change.
    """
    spec, status = node.get("spec") or {}, node.get("status") or {}
    return {
        "apiVersion": node.get("apiVersion", "v1"), "kind": "Node",
        "metadata": _lean_metadata(node.get("metadata") or {}),
        "spec": {k: spec[k] for k in ("unschedulable", "taints") if k in spec},
        "status": {
            "allocatable": status.get("allocatable") or {},
            "conditions": [{"type": c.get("type"), "status": c.get("status")}
                           for c in status.get("conditions") or []],
        },
    }


def _lean(body: Body) -> Body:
    meta = body.get("metadata") or {}
    if "managedFields" not in meta:
        return body
    return {**body, "metadata": _lean_metadata(meta)}


TRIM: dict[str, Callable[[Body], Body]] = {"Pod": trim_pod, "Node": trim_node}


def _label(obj: Body | None, label: str) -> str | None:
    if obj is None:
        return None
    value = ((obj.get("metadata") or {}).get("labels") or {}).get(label)
    return None if value is None else str(value)


def _same(a: Body, b: Body) -> bool:
    """Equal but for the resourceVersion."""
    ma, mb = a.get("metadata") or {}, b.get("metadata") or {}
    if {**ma, "resourceVersion": ""} != {**mb, "resourceVersion": ""}:
        return False
    return all(a.get(k) == b.get(k) for k in set(a) | set(b) if k != "metadata")


def _terms(selector: str) -> list[tuple[str, str, str]] | None:
    """``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k`` terms; None for set-based ones."""
    terms: list[tuple[str, str, str]] = []
    for raw in (t.strip() for t in selector.split(",")):
        if not raw:
            continue
        if " in " in raw or " notin " in raw or "(" in raw:
            return None
        if "!=" in raw:
            k, _, v = raw.partition("!=")
            terms.append(("!=", k.strip(), v.strip()))
        elif "=" in raw:
            k, _, v = raw.replace("==", "=").partition("=")
            terms.append(("=", k.strip(), v.strip()))
        elif raw.startswith("!"):
            terms.append(("!", raw[1:].strip(), ""))
        else:
            terms.append(("exists", raw, ""))
    return terms


def _covers(selector: str, query: list[tuple[str, str, str]]) -> bool:
    """Whether every object ``query`` selects also matches ``selector`` (``k`` covers ``k=v``)."""
    own = _terms(selector)
    return own is not None and all(
        term in query or (term[0] == "exists" and any(q[0] == "=" and q[1] == term[1]
                                                      for q in query))
        for term in own)


def matches(labels: dict[str, str], selector: str) -> bool | None:
    """Whether ``labels`` match the equality-based ``selector``; None when it is set-based."""
    terms = _terms(selector)
    if terms is None:
        return None
    for op, k, v in terms:
        if op == "=" and labels.get(k) != v:
            return False
        if op == "!=" and labels.get(k) == v:
            return False
        if op == "!" and k in labels:
            return False
        if op == "exists" and k not in labels:
            return False
    return True


class Informer:
    """Objects of one kind (matching ``labels``), listed once, then kept by a watch."""

    def __init__(self, kube: Kube, kind: str, labels: str = "",
                 on_change: Callable[[], None] | None = None,
                 watch_timeout_s: float = WATCH_TIMEOUT_S, index: str = "",
                 whole: bool = False) -> None:
        self.kube, self.kind, self.labels, self.index = kube, kind, labels, index
        self.indexed: dict[str, set[Key]] = {}
        """Keys of the held objects by the value of their ``index`` label."""
        self.on_change = on_change or (lambda: None)
        self.watch_timeout_s = watch_timeout_s
        self.trim = _lean if whole else TRIM.get(kind, _lean)
        self.items: dict[Key, Body] = {}
        self._gone: dict[Key, int] = {}
        self.resource_version = ""
        self.synced = threading.Event()
        self.generation = 0
        """Moves on with every change to what is held."""
        self.lists = 0
        self.watches: list[str] = []
        """The resourceVersion each watch started from, in order."""
        self.journal: list[Key] = []
        """Keys whose object changed (or went), in order, since ``journal_start``."""
        self.journal_labels: list[tuple[str | None, str | None]] = []
        """With an ``index``: each journal entry's label value before and after (in step)."""
        self.journal_start = 0
        """The position of ``journal[0]`` among every change since this informer began."""
        self.epoch = 0
        """Moves on when the journal starts anew (a relist; a journal grown too long)."""
        self.listeners: list[Callable[[Body], None]] = []
        """Called, in the watch's thread, with each object a watch event added or changed."""
        self._lock = threading.Lock()

    # -- reads ----------------------------------------------------------------------

    def get(self, namespace: str, name: str) -> Body | None:
        return self.items.get((namespace, name))

    def labelled(self, value: str) -> list[Body]:
        """The held objects whose ``index`` label is ``value``."""
        with self._lock:
            return [self.items[k] for k in self.indexed.get(value, ()) if k in self.items]

    def changes(self, mark: tuple[int, int] | None) -> tuple[list[Key] | None, tuple[int, int]]:
        """Keys changed since ``mark`` (None: everything may have, read it all), and the
        mark to give next time."""
        with self._lock:
            end = self.journal_start + len(self.journal)
            if mark is None or mark[0] != self.epoch or mark[1] < self.journal_start:
                return None, (self.epoch, end)
            return self.journal[mark[1] - self.journal_start:], (self.epoch, end)

    def changed_labels(self, mark: tuple[int, int] | None
                       ) -> tuple[set[str] | None, tuple[int, int]]:
        """The ``index`` label's values of the objects changed (or gone) since ``mark``, as
        they were before and after (None: any may have), and the mark to give next time."""
        with self._lock:
            end = self.journal_start + len(self.journal)
            if (not self.index or mark is None or mark[0] != self.epoch
                    or mark[1] < self.journal_start):
                return None, (self.epoch, end)
            found: set[str] = set()
            for before, after in self.journal_labels[mark[1] - self.journal_start:]:
                if before is not None:
                    found.add(before)
                if after is not None:
                    found.add(after)
            return found, (self.epoch, end)

    def _put(self, key: Key, obj: Body | None) -> None:
        """Hold ``obj`` under ``key`` (None: drop it), keeping the index (lock held)."""
        old = self.items.pop(key, None) if obj is None else self.items.get(key)
        if obj is not None:
            self.items[key] = obj
        if len(self.journal) > max(1024, 2 * len(self.items)):
            self.journal_start += len(self.journal)
            self.journal = []
            self.journal_labels = []
            self.epoch += 1
        self.journal.append(key)
        if not self.index:
            return
        before = _label(old, self.index)
        after = _label(obj, self.index)
        self.journal_labels.append((before, after))
        if before == after:
            return
        if before is not None:
            keys = self.indexed.get(before)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self.indexed[before]
        if after is not None:
            self.indexed.setdefault(after, set()).add(key)

    def values(self) -> list[Body]:
        with self._lock:
            return list(self.items.values())

    # -- keeping up -----------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """List, then watch and resume, until ``stop`` is set."""
        pause = 0.0
        while not stop.is_set():
            try:
                if not self.resource_version:
                    self.relist()
                self.follow(stop)
                pause = 0.0
            except Exception as exc:  # the connection broke, the server is away: resume
                if stop.is_set():
                    return
                pause = min(max(pause * 2, _BACKOFF_S[0]), _BACKOFF_S[1])
                log.warning("watch %s: %s (again in %.1f s, from resourceVersion %s)",
                            self.kind, exc, pause, self.resource_version or "(list)")
                stop.wait(pause)

    def relist(self) -> None:
        """Take every object from the server, replacing what is held."""
        listing = self.kube.listing(self.kind, labels=self.labels)
        # A list's items carry no kind or apiVersion (the list does): held objects
        # must, as a watch brings them, so that one read back can be written.
        typed = {"kind": self.kind, "apiVersion": listing.get("apiVersion", "")}
        fresh = {key_of(item): self.trim({**typed, **item})
                 for item in listing.get("items") or []}
        with self._lock:
            changed = set(fresh) != set(self.items) or any(
                version_of(self.items[k]) != version_of(v) for k, v in fresh.items())
            self.items = fresh
            self.journal_start += len(self.journal)
            self.journal = []
            self.journal_labels = []
            self.epoch += 1
            self.indexed = {}
            if self.index:
                for key, item in fresh.items():
                    value = _label(item, self.index)
                    if value is not None:
                        self.indexed.setdefault(value, set()).add(key)
            self._gone.clear()
            self.resource_version = str(listing.get("metadata", {}).get("resourceVersion", ""))
            self.lists += 1
            if changed:
                self.generation += 1
        self.synced.set()
        if changed or self.lists == 1:
            self.on_change()

    def follow(self, stop: threading.Event) -> None:
        """Apply events from the last resourceVersion until the watch ends."""
        self.watches.append(self.resource_version)
        for type_, obj in self.kube.watch(self.kind, since=self.resource_version,
                                          timeout_s=self.watch_timeout_s, labels=self.labels,
                                          bookmarks=True):
            if stop.is_set():
                return
            if type_ == "ERROR":
                if obj.get("code") == 410:
                    self.resource_version = ""  # too old for the server: list again
                    return
                raise UnavailableError(f"watch {self.kind}: {obj.get('message') or obj}")
            version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
            if type_ != "BOOKMARK" and self.apply(obj, deleted=type_ == "DELETED"):
                if type_ != "DELETED":
                    for listener in self.listeners:
                        listener(obj)
                self.on_change()
            if version:
                self.resource_version = version

    def apply(self, obj: Body, deleted: bool = False) -> bool:
        """Take ``obj`` if it is newer than what is held; True when that changed anything."""
        key, version = key_of(obj), version_of(obj)
        with self._lock:
            held = self.items.get(key)
            if version <= self._gone.get(key, -1):
                return False
            if held is not None and version <= version_of(held):
                return False  # the same or an older version: what is held is as new
            if deleted:
                self._gone[key] = version
                if held is None:
                    return False
                self._put(key, None)
                self.generation += 1
                return True
            self._gone.pop(key, None)
            new = self.trim(obj)
            if held is not None and _same(held, new):
                self._put(key, new)
                return False
            self._put(key, new)
            self.generation += 1
            return True

    def patch(self, key: Key, change: Callable[[Body], Body]) -> None:
        """Replace a held object by ``change(object)`` (a write the server answered without it)."""
        with self._lock:
            held = self.items.get(key)
            if held is not None:
                self._put(key, change(held))
                self.generation += 1


class Cache:
    """Informers of the watched kinds; reads of a kind are answered once its informers listed."""

    def __init__(self, kube: Kube, watched: Sequence[Watched],
                 on_change: Callable[[], None] | None = None,
                 watch_timeout_s: float = WATCH_TIMEOUT_S) -> None:
        self.watched = tuple(watched)
        self.informers: dict[tuple[str, str], Informer] = {
            (w.kind, w.labels): Informer(kube, w.kind, w.labels, on_change, watch_timeout_s,
                                         index=w.index, whole=w.whole)
            for w in self.watched
        }
        self._complete = {w.kind for w in self.watched if w.labels == "" or w.complement is not None}

    def start(self, stop: threading.Event) -> list[threading.Thread]:
        """One thread per informer, until ``stop`` is set."""
        threads = [
            threading.Thread(target=informer.run, args=(stop,), daemon=True,
                             name=f"watch-{informer.kind}{'-' if informer.labels else ''}"
                                  f"{informer.labels}")
            for informer in self.informers.values()
        ]
        for thread in threads:
            thread.start()
        return threads

    def listen(self, kind: str, labels: str, listener: Callable[[Body], None]) -> None:
        """Have ``listener`` called with every object the watch of ``kind``/``labels`` adds
        or changes, in the watch's thread, before the loop is woken (it must be quick)."""
        self.informers[(kind, labels)].listeners.append(listener)

    def wait_synced(self, timeout_s: float | None = None) -> bool:
        """Whether every informer has listed (waiting up to ``timeout_s``)."""
        return all(i.synced.wait(timeout_s) for i in self.informers.values())

    def _of(self, kind: str) -> list[Informer]:
        return [i for (k, _), i in self.informers.items() if k == kind]

    def _ready(self, kind: str) -> list[Informer] | None:
        found = self._of(kind)
        return found if found and all(i.synced.is_set() for i in found) else None

    def answers(self, kind: str, labels: str = "") -> bool:
        """Whether an informer with exactly this selector has listed."""
        return any(i.labels == labels for i in self._ready(kind) or ())

    def generation(self, kind: str, labels: str | None = None) -> int:
        """Changes so far to the objects of ``kind`` (with exactly that selector if given)."""
        return sum(i.generation for (k, sel), i in self.informers.items()
                   if k == kind and (labels is None or sel == labels))

    def changes(self, kind: str, mark: object) -> tuple[list[Key] | None, object] | None:
        """``Informer.changes`` of the one informer of ``kind`` (every object, listed); None
        when there is no such informer."""
        ready = self._ready(kind)
        if ready is None or len(ready) != 1 or ready[0].labels:
            return None
        informer = ready[0]
        if mark is not None and not (isinstance(mark, tuple) and len(mark) == 3
                                     and mark[0] is informer):
            mark = None
        keys, at = informer.changes(None if mark is None else (mark[1], mark[2]))
        return keys, (informer, *at)

    def changed_labels(self, kind: str, label: str, mark: object
                       ) -> tuple[set[str] | None, object] | None:
        """``Informer.changed_labels`` of the informer of ``kind`` that indexes ``label``;
        None when there is none (or it has not listed yet)."""
        informer = next((i for i in self._ready(kind) or () if i.index == label), None)
        if informer is None:
            return None
        if not (isinstance(mark, tuple) and len(mark) == 3 and mark[0] is informer):
            mark = None
        values, at = informer.changed_labels(None if mark is None else (mark[1], mark[2]))
        return values, (informer, *at)

    # -- reads ------------------------------------------------------------------------

    def labelled(self, kind: str, label: str, value: str) -> list[Body] | None:
        """Objects of ``kind`` whose ``label`` is ``value``, from the informer that indexes
        that label; None when none has listed."""
        for informer in self._ready(kind) or ():
            if informer.index == label:
                return informer.labelled(value)
        return None

    def get(self, kind: str, name: str, namespace: str | None) -> Body | _Miss | None:
        ready = self._ready(kind)
        if ready is None:
            return MISS
        for informer in ready:
            found = informer.get(namespace or "", name)
            if found is not None:
                return found
        return None if kind in self._complete else MISS

    def list(self, kind: str, namespace: str | None, labels: str) -> list[Body] | None:
        """The objects, or None when the cache cannot say (not watched, or another selector)."""
        ready = self._ready(kind)
        if ready is None:
            return None
        exact = [i for i in ready if i.labels == labels]
        if exact:
            chosen: Iterable[Body] = exact[0].values()
        elif labels == "" and kind in self._complete:
            chosen = [o for i in ready for o in i.values()]
        else:
            query = _terms(labels)
            wider = [i for i in ready if query is not None and _covers(i.labels, query)]
            if not wider:
                return None
            chosen = [o for o in wider[0].values()
                      if matches((o.get("metadata") or {}).get("labels") or {}, labels)]
        if namespace is None:
            return list(chosen)
        return [o for o in chosen if (o.get("metadata") or {}).get("namespace") == namespace]

    # -- what the loop wrote ------------------------------------------------------------

    def saw(self, obj: Body, deleted: bool = False) -> None:
        """An object as the server answered a write (or a fresh read) with it."""
        labels = (obj.get("metadata") or {}).get("labels") or {}
        for informer in self._of(str(obj.get("kind", ""))):
            if informer.synced.is_set() and matches(labels, informer.labels):
                informer.apply(obj, deleted=deleted)

    def bound(self, pod: str, namespace: str, node: str) -> None:
        """A pod the loop bound: held as bound until the watch brings the server's copy."""
        def bind(held: Body) -> Body:
            return {**held, "spec": {**(held.get("spec") or {}), "nodeName": node}}
        for informer in self._of("Pod"):
            informer.patch((namespace, pod), bind)


class CachedKube(Kube):
    """``Kube`` whose reads of watched kinds come from ``cache``; the rest goes to ``inner``.

    It shares ``inner``'s connection, discovery and call counters (it is a
    view, not a second client).  ``conflicts`` counts the 409s its writes got.
    """

    def __init__(self, inner: Kube, cache: Cache) -> None:  # a view: inner's state, no new one
        self.__dict__.update(inner.__dict__)
        self.inner, self.cache = inner, cache
        self.conflicts = 0

    def get(self, kind: str, name: str, namespace: str | None = None) -> Body | None:
        found = self.cache.get(kind, name, namespace)
        if not isinstance(found, _Miss):
            return found
        return self.inner.get(kind, name, namespace)

    def list(self, kind: str, namespace: str | None = None, labels: str = "") -> list[Body]:
        found = self.cache.list(kind, namespace, labels)
        return found if found is not None else self.inner.list(kind, namespace, labels)

    def listing(self, kind: str, namespace: str | None = None, labels: str = "",
                fields: str = "") -> Body:
        return self.inner.listing(kind, namespace, labels, fields)

    def changes(self, kind: str, mark: object) -> tuple[Keys | None, object] | None:
        return self.cache.changes(kind, mark)

    def changed_labels(self, kind: str, label: str, mark: object
                       ) -> tuple[set[str] | None, object] | None:
        """Which values of ``label`` the objects of ``kind`` that changed since ``mark`` had
        (``Cache.changed_labels``); None when no watch indexes that label."""
        return self.cache.changed_labels(kind, label, mark)

    def labelled(self, kind: str, namespace: str, label: str, value: str) -> Bodies:
        """Objects of ``kind`` in ``namespace`` whose ``label`` is ``value`` (indexed if watched)."""
        found = self.cache.labelled(kind, label, value)
        if found is None:
            return self.inner.list(kind, namespace, labels=f"{label}={value}")
        return [o for o in found if (o.get("metadata") or {}).get("namespace") == namespace]

    def watch(self, kind: str, namespace: str | None = None, *, since: str, timeout_s: float,
              labels: str = "", fields: str = "", bookmarks: bool = False
              ) -> Iterator[tuple[str, Body]]:
        return self.inner.watch(kind, namespace, since=since, timeout_s=timeout_s,
                                labels=labels, fields=fields, bookmarks=bookmarks)

    def create(self, body: Body) -> Body:
        created = self.inner.create(body)
        self.cache.saw(created)
        return created

    def replace(self, body: Body, dry_run: bool = False) -> Body:
        if dry_run:
            return self.inner.replace(body, dry_run=True)
        return self._fenced(body, self.inner.replace)

    def replace_status(self, body: Body) -> Body:
        return self._fenced(body, self.inner.replace_status)

    def delete(self, kind: str, name: str, namespace: str | None = None,
               grace_seconds: int | None = None) -> bool:
        return self.inner.delete(kind, name, namespace, grace_seconds)

    def bind(self, pod: str, namespace: str, node: str) -> None:
        self.inner.bind(pod, namespace, node)
        self.cache.bound(pod, namespace, node)

    def serves(self, api_version: str, plural: str) -> bool:
        return self.inner.serves(api_version, plural)

    def close(self) -> None:
        self.inner.close()

    def _fenced(self, body: Body, write: Callable[[Body], Body]) -> Body:
        try:
            saved = write(body)
        except ConflictError:
            self.conflicts += 1
            self._refresh(body)
            raise
        self.cache.saw(saved)
        return saved

    def _refresh(self, body: Body) -> None:
        """Read the object a write conflicted on, so the cache holds it as it now is."""
        kind, (namespace, name) = str(body["kind"]), key_of(body)
        try:
            current = self.inner.get(kind, name, namespace or None)
        except ShoalError:
            return  # the watch brings it
        if current is not None:
            self.cache.saw(current)
