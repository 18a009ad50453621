"""User placement policies from installed packages: the ``shoal.policies`` entry points.

A distribution declares its scorers in its packaging metadata::

    [project.entry-points."shoal.policies"]
    my-policy = "my_package.scoring:MyScorer"

Each entry point's name becomes the policy name (``shoal sim --policy
my-policy``); its object must be a ``ScorerFactory``, a callable that takes a
``ScorerContext`` and returns a ``Scorer`` (a scorer class does).  See
docs/policies.md.

The shells that resolve policy names call ``load_policies()`` (once per
process, lazily; later calls return the first result) before they look a name
up: ``shoal sim``, ``shoal policies`` and the server.  A broken entry point
(import error, not callable) never stops the others: it is recorded as one
line naming the entry point and its distribution.  ``require_policies`` turns
that line into an ``InputError`` (exit 2) when the broken policy is the one
asked for, and into a warning otherwise.  An entry point whose name is taken
(by a built-in policy or an earlier plugin) is ignored with a warning.

This module is a shell: it reads installed metadata and imports user code, so
it lives outside ``policy/``, which stays pure.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points

from shoal.errors import InputError
from shoal.policy.placement import Scorer, ScorerContext, register_scorer, scorer_names

GROUP = "shoal.policies"


@dataclass(frozen=True)
class PluginPolicy:
    """A policy registered from an entry point."""

    name: str
    value: str
    distribution: str


@dataclass
class PluginReport:
    """What ``load_policies`` found: the policies it registered and the broken ones."""

    loaded: dict[str, PluginPolicy] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    """Policy name -> one line saying what is wrong, naming entry point and distribution."""
    ignored: list[str] = field(default_factory=list)
    """Entry points not registered because their name is taken (a warning, never an error)."""


_lock = threading.Lock()
_report: PluginReport | None = None


def load_policies() -> PluginReport:
    """Register every scorer of the ``shoal.policies`` group, once per process."""
    global _report
    with _lock:
        if _report is None:
            _report = _load(entry_points(group=GROUP))
        return _report


def require_policies(names: Iterable[str], warn: Callable[[str], None]) -> PluginReport:
    """Load plugins; fail (exit 2) if a requested policy is broken, warn about the rest."""
    report = load_policies()
    wanted = list(names)
    for name in wanted:
        if name in report.problems:
            raise InputError(report.problems[name])
    for name, problem in report.problems.items():
        if name not in wanted:
            warn(problem)
    for line in report.ignored:
        warn(line)
    return report


def _distribution(point: EntryPoint) -> str:
    dist = point.dist
    if dist is None:
        return "an unknown distribution"
    version = dist.version
    return f"distribution {dist.name} {version}" if version else f"distribution {dist.name}"


def _load(points: Iterable[EntryPoint]) -> PluginReport:
    report = PluginReport()
    builtin = set(scorer_names())
    for point in sorted(points, key=lambda p: (p.name, p.value)):
        origin = f"policy plugin {point.name!r} ({point.value}) from {_distribution(point)}"
        if point.name in builtin or point.name in report.loaded:
            report.ignored.append(f"{origin}: ignored, the name is taken by another policy")
            continue
        try:
            factory = point.load()
        except Exception as exc:  # any error in user code: report it, never crash
            report.problems[point.name] = f"{origin}: cannot be loaded: {type(exc).__name__}: {exc}"
            continue
        if not callable(factory):
            report.problems[point.name] = (
                f"{origin}: expected a scorer factory (a callable taking a ScorerContext), "
                f"got {type(factory).__name__}"
            )
            continue
        register_scorer(point.name, _checked(factory, origin))
        dist = point.dist.name if point.dist is not None else "?"
        report.loaded[point.name] = PluginPolicy(point.name, point.value, dist)
    return report


def _checked(
    factory: Callable[[ScorerContext], Scorer], origin: str
) -> Callable[[ScorerContext], Scorer]:
    """The factory, with its failures and wrong results reported as one clear line."""

    def make(context: ScorerContext) -> Scorer:
        try:
            scorer = factory(context)
        except Exception as exc:
            raise InputError(f"{origin}: the factory failed: {type(exc).__name__}: {exc}") from exc
        missing = [m for m in ("score", "pick_gpus") if not callable(getattr(scorer, m, None))]
        if missing:
            raise InputError(
                f"{origin}: the factory returned a {type(scorer).__name__} without "
                f"{' and '.join(missing)}()"
            )
        return scorer

    return make
