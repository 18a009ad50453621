"""Placement: filters, scorers and GPU choice on small hand-made clusters."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.domain.cluster import Binding, ClusterState
from shoal.domain.nodes import Node
from shoal.domain.workload import Constraints, PodShape, Workload
from shoal.errors import UnknownReferenceError
from shoal.policy.placement import (
    Placer,
    ScorerContext,
    make_scorer,
    node_ranks,
    place_pod,
    scorer_names,
    typical_pods,
)
from shoal.policy.placement import fgd as fgd_module
from shoal.policy.placement.base import ALL, choose, register_scorer
from shoal.policy.placement.filters import fit_mask


def node(name: str, gpus: int = 8, model: str = "A100", cpu: int = 64_000, **labels: str) -> Node:
    return Node(
        name=name,
        pool="p",
        cpu=cpu,
        memory=512 * 1024,
        gpu_model=model if gpus else "",
        gpu_count=gpus,
        labels={"kubernetes.io/hostname": name, **labels},
    )


def scorer(name: str, shapes: list[PodShape] | None = None):
    return make_scorer(
        name, ScorerContext(typical_pods(shapes or [PodShape(gpu_count=1, gpu_milli=1000)]))
    )


HALF = PodShape(cpu=1000, memory=1024, gpu_count=1, gpu_milli=500)
ONE = PodShape(cpu=1000, memory=1024, gpu_count=1, gpu_milli=1000)


def test_least_allocated_spreads_most_allocated_packs() -> None:
    state = ClusterState([node("a"), node("b")])
    state.bind(place_pod(state, ONE, scorer("most-allocated"), node_ranks(2, None)))
    spread = place_pod(state, ONE, scorer("least-allocated"), node_ranks(2, None))
    packed = place_pod(state, ONE, scorer("most-allocated"), node_ranks(2, None))
    assert state.names[spread.node] == "b"
    assert state.names[packed.node] == "a"


def test_fractions_share_one_gpu_under_best_fit() -> None:
    state = ClusterState([node("a", gpus=2)])
    first = place_pod(state, HALF, scorer("best-fit"), node_ranks(1, None))
    state.bind(first)
    second = place_pod(state, HALF, scorer("best-fit"), node_ranks(1, None))
    assert first.gpus == second.gpus  # the half-used GPU is filled before a fresh one
    state.bind(second)
    assert sorted(state.gpu_free[0].tolist()) == [0, 1000]


def test_fgd_keeps_whole_gpus_free_for_whole_gpu_pods() -> None:
    # The expected mix is mostly 1-GPU pods: a 0.5 pod should go where a GPU
    # is already split, not break a fresh GPU.
    mix = [ONE] * 8 + [HALF] * 2
    state = ClusterState([node("a", gpus=2), node("b", gpus=2)])
    state.bind(place_pod(state, HALF, scorer("fgd", mix), node_ranks(2, None)))
    used = int(np.flatnonzero(state.gpu_free.min(axis=1) < 1000)[0])
    choice = place_pod(state, HALF, scorer("fgd", mix), node_ranks(2, None))
    assert choice.node == used
    assert state.gpu_free[used, choice.gpus[0]] == 500


def test_gpu_model_and_capacity_filters() -> None:
    state = ClusterState([node("t4", gpus=2, model="T4"), node("v100", gpus=1, model="V100")])
    wants_v100 = PodShape(cpu=1000, gpu_count=1, gpu_milli=1000, models=("V100",))
    placer = Placer(scorer("least-allocated"), node_ranks(2, None))
    job = Workload(name="j", tenant="t", pods=(wants_v100,))
    assert state.names[placer.place(state, job)[0].node] == "v100"
    two = Workload(
        name="k", tenant="t", pods=(PodShape(gpu_count=2, gpu_milli=1000, models=("V100",)),)
    )
    assert placer.place(state, two) is None


def test_a_fraction_goes_only_to_nodes_that_share_gpus_when_some_do() -> None:
    """On a cluster where a device plugin splits some nodes' GPUs (label
    ``shoal.dev/gpu-sharing``), one GPU elsewhere is a whole one: a fractional pod
    goes only to a sharing node, a whole-GPU pod anywhere; with no such label, Shoal
    shares every node's GPUs itself."""
    from shoal.domain.nodes import GPU_SHARING

    # Most-allocated prefers "a", where one GPU is already in use.
    state = ClusterState([node("a", gpus=2), node("s", gpus=2, **{GPU_SHARING: "hami"})])
    placer = Placer(scorer("most-allocated"), node_ranks(2, None))
    state.bind(placer.place(state, Workload(name="w", tenant="t", pods=(ONE,)))[0])
    assert state.gpu_free[0].tolist() == [0, 1000]  # on "a"
    half = Workload(name="h", tenant="t", pods=(HALF,))
    assert state.names[placer.place(state, half)[0].node] == "s"
    assert state.names[placer.place(state, Workload(name="o", tenant="t", pods=(ONE,)))[0]
                       .node] == "a"
    full = ClusterState([node("a", gpus=1), node("s", gpus=0, **{GPU_SHARING: "hami"})])
    assert Placer(scorer("most-allocated"), node_ranks(2, None)).place(full, half) is None
    plain = ClusterState([node("a", gpus=2), node("b", gpus=2)])
    assert Placer(scorer("most-allocated"), node_ranks(2, None)).place(plain, half) is not None


def test_gang_is_all_or_nothing_and_leaves_state_untouched() -> None:
    state = ClusterState([node("a", gpus=2), node("b", gpus=2)])
    before = state.gpu_free.copy()
    placer = Placer(scorer("most-allocated"), node_ranks(2, None))
    gang = Workload(name="g", tenant="t", pods=(PodShape(gpu_count=2, gpu_milli=1000),) * 3)
    assert placer.place(state, gang) is None
    assert (state.gpu_free == before).all()
    fits = Workload(name="h", tenant="t", pods=(PodShape(gpu_count=2, gpu_milli=1000),) * 2)
    assert sorted(b.node for b in placer.place(state, fits)) == [0, 1]


def test_gang_packs_into_one_rack_when_asked() -> None:
    rack = "topology.shoal.dev/rack"
    nodes = [node(f"n{i}", gpus=4, **{rack: f"r{i % 2}"}) for i in range(4)]
    state = ClusterState(nodes)
    placer = Placer(scorer("least-allocated"), node_ranks(4, None))
    pods = (PodShape(gpu_count=4, gpu_milli=1000),) * 2
    packed = Workload(name="p", tenant="t", pods=pods, constraints=Constraints(pack="rack"))
    racks = {nodes[b.node].labels[rack] for b in placer.place(state, packed)}
    assert len(racks) == 1


def test_anti_affinity_spreads_pods_over_nodes() -> None:
    state = ClusterState([node("a"), node("b"), node("c")])
    placer = Placer(scorer("most-allocated"), node_ranks(3, None))
    job = Workload(
        name="s", tenant="t", pods=(ONE,) * 3, constraints=Constraints(anti_affinity="node")
    )
    assert len({b.node for b in placer.place(state, job)}) == 3


def test_node_selector_and_taints() -> None:
    from shoal.domain.nodes import Taint

    tainted = Node(
        name="x",
        pool="p",
        cpu=8000,
        memory=1024,
        gpu_model="A100",
        gpu_count=1,
        labels={"kubernetes.io/hostname": "x"},
        taints=(Taint(key="dedicated", value="infer"),),
    )
    state = ClusterState([tainted, node("y", zone="z2")])
    placer = Placer(scorer("least-allocated"), node_ranks(2, None))
    plain = Workload(
        name="a", tenant="t", pods=(ONE,), constraints=Constraints(node_selector=(("zone", "z1"),))
    )
    assert placer.place(state, plain) is None
    intolerant = Workload(
        name="c",
        tenant="t",
        pods=(ONE,),
        constraints=Constraints(required=(("kubernetes.io/hostname", "In", ("x",)),)),
    )
    assert placer.place(state, intolerant) is None
    tolerant = Workload(
        name="b",
        tenant="t",
        pods=(ONE,),
        constraints=Constraints(
            required=(("kubernetes.io/hostname", "In", ("x",)),),
            tolerations=(("dedicated", None, None),),
        ),
    )
    assert placer.place(state, tolerant)[0].node == 0


def test_unknown_policy_names_the_known_ones() -> None:
    with pytest.raises(UnknownReferenceError, match="best-fit"):
        make_scorer("bestfit", ScorerContext())


def test_users_can_register_a_scorer() -> None:
    class FirstNode:
        name = "first-node"

        def __init__(self, context: ScorerContext) -> None:
            del context

        def score(self, state, pod, nodes):
            return -np.arange(len(state), dtype=float)[nodes]

        def pick_gpus(self, state, pod, node):
            return tuple(
                int(g)
                for g in np.flatnonzero(state.gpu_free[node] >= pod.gpu_milli)[: pod.gpu_count]
            )

    register_scorer("first-node", FirstNode)
    assert "first-node" in scorer_names()
    state = ClusterState([node("a"), node("b"), node("c")])
    state.bind(
        place_pod(state, ONE, make_scorer("first-node", ScorerContext()), node_ranks(3, None))
    )
    assert state.gpu_free[0].sum() == 7000


pods = st.builds(
    PodShape,
    cpu=st.integers(0, 40_000),
    memory=st.integers(0, 200_000),
    gpu_count=st.sampled_from([0, 1, 1, 2, 4, 8]),
    gpu_milli=st.sampled_from([1000]),
)
fractions = st.builds(
    PodShape, cpu=st.integers(0, 8000), gpu_count=st.just(1), gpu_milli=st.integers(1, 999)
)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.one_of(pods, fractions), min_size=1, max_size=60),
    st.sampled_from(sorted(set(scorer_names()) - {"first-node"})),
)
def test_no_placement_exceeds_node_capacity(shapes: list[PodShape], policy: str) -> None:
    shapes = [s if s.gpu_count else PodShape(cpu=s.cpu, memory=s.memory) for s in shapes]
    state = ClusterState([node("a", gpus=8), node("b", gpus=2, model="T4"), node("c", gpus=0)])
    chosen = make_scorer(policy, ScorerContext(typical_pods(shapes), seed=1))
    for shape in shapes:
        binding = place_pod(state, shape, chosen, node_ranks(3, 1))
        if binding is not None:
            assert len(binding.gpus) == shape.gpu_count
            state.bind(binding)
        assert (state.cpu_free >= 0).all() and (state.mem_free >= 0).all()
        assert ((state.gpu_free >= 0) & (state.gpu_free <= 1000)).all()


def test_topology_scorer_fills_busy_domains_first() -> None:
    nvlink = "topology.shoal.dev/nvlink-domain"
    nodes = [node(f"n{i}", gpus=4, **{nvlink: f"d{i // 2}"}) for i in range(4)]
    state = ClusterState(nodes)
    state.bind(place_pod(state, PodShape(gpu_count=2, gpu_milli=1000),
                         scorer("most-allocated"), np.arange(4)))
    busy = state.names[int(np.flatnonzero(state.gpu_left < 4000)[0])]
    reverse = np.arange(4)[::-1].copy()  # ties would go to n3
    four = PodShape(gpu_count=4, gpu_milli=1000)
    chosen = place_pod(state, four, scorer("topology"), reverse)
    partner = {"n0": "n1", "n1": "n0", "n2": "n3", "n3": "n2"}[busy]
    assert state.names[chosen.node] == partner  # the other node of the busy domain
    assert state.names[place_pod(state, four, scorer("most-allocated"), reverse).node] == "n3"


# -- FGD's caches against the arithmetic they replace --------------------------

def reference_of(frag, gpu_free, cpu_free, model_id):
    """``Fragmentation.of`` as written before any caching, batches and dedup included."""
    if len(frag.freq) == 0:
        return np.zeros(len(cpu_free))

    def of_rows(g, c, m):
        total = g.sum(axis=1)
        usable = g[:, None, :] >= frag.milli[None, :, None]
        count = usable.sum(axis=2)
        unusable = total[:, None] - (g[:, None, :] * usable).sum(axis=2)
        fits = (
            (count >= frag.count[None, :])
            & (c[:, None] >= frag.cpu[None, :])
            & frag.access[:, m].T
            & ~frag.cpu_only[None, :]
        )
        return np.where(fits, unusable, total[:, None]) @ frag.freq

    if len(cpu_free) > 256:
        rows = np.ascontiguousarray(
            np.concatenate([gpu_free, cpu_free[:, None], model_id[:, None]], axis=1)
        )
        keys = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        unique = rows[first]
        if len(unique) < len(rows) // 2:
            return of_rows(unique[:, :-2], unique[:, -2], unique[:, -1])[inverse.reshape(-1)]
    return of_rows(gpu_free, cpu_free, model_id)


def random_mix(rng: np.random.Generator) -> list[PodShape]:
    shapes = []
    for _ in range(200):
        gpus = int(rng.choice([0, 1, 1, 2, 4]))
        milli = 0 if gpus == 0 else int(rng.choice([250, 300, 500, 700, 1000]))
        if gpus > 1:
            milli = 1000
        models = () if gpus == 0 else [(), ("A100",), ("V100",)][int(rng.integers(3))]
        shapes.append(PodShape(cpu=int(rng.choice([0, 1000, 4000, 8000])), gpu_count=gpus,
                               gpu_milli=milli, models=models))
    return shapes


def random_states(rng: np.random.Generator, size: int, gpus: int = 8):
    # Drawn from a small pool so that big batches repeat states (and dedup).
    pool = int(rng.integers(1, size + 1))
    free = rng.choice([-300, 0, 100, 250, 500, 700, 750, 1000], size=(pool, gpus))
    cpu = rng.integers(-4, 20, size=pool) * 500
    model = rng.integers(-1, 2, size=pool)
    pick = rng.integers(0, pool, size=size)
    return free[pick], cpu[pick], model[pick]


def test_fragmentation_rounds_exactly_as_before_caching() -> None:
    # Same batches, same last bits: integer FGD scores tie on those bits.
    rng = np.random.default_rng(3)
    for _ in range(40):
        frag = fgd_module.Fragmentation(typical_pods(random_mix(rng)), ["A100", "V100"])
        for size in (1, 1, 2, 3, 5, 8, 37, 300, 700):
            free, cpu, model = random_states(rng, size)
            expected = reference_of(frag, free, cpu, model)
            assert np.array_equal(frag.of(free, cpu, model), expected)
            assert np.array_equal(frag.of(free, cpu, model), expected)  # from the caches


@pytest.mark.parametrize("budget", [None, 40])
def test_cached_rows_after_a_pod_weigh_as_the_states_themselves(
    budget: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if budget is not None:  # the tables are emptied again and again
        monkeypatch.setattr(fgd_module, "_SEEN_AFTER_ROWS", budget)
    rng = np.random.default_rng(4)
    frag = fgd_module.Fragmentation(typical_pods(random_mix(rng)), ["A100", "V100"])
    for _ in range(60):
        free, cpu, model = random_states(rng, int(rng.integers(1, 30)))
        for pod in (HALF, ONE, PodShape(cpu=2000, gpu_count=2, gpu_milli=1000), PodShape(cpu=500)):
            rows = frag.after_per_pod(free, cpu - pod.cpu, model, pod)
            if pod.is_fractional:
                states = (free[:, None, :] - pod.gpu_milli * np.eye(8, dtype=np.int64)).reshape(-1, 8)
                cpus, models = np.repeat(cpu - pod.cpu, 8), np.repeat(model, 8)
            else:
                states = fgd_module._take_whole(free, pod.gpu_count) if pod.gpu_count else free
                cpus, models = cpu - pod.cpu, model
            assert np.array_equal(frag.weigh(rows), reference_of(frag, states, cpus, models))


@pytest.mark.parametrize("collide", [False, True])
def test_dedup_if_halves_is_the_byte_sort(collide: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if collide:  # every row hashes alike: the exact sort must take over
        monkeypatch.setattr(fgd_module, "_MIX", np.zeros(64, dtype=np.uint64))
    rng = np.random.default_rng(5)
    halved = 0
    for _ in range(200):
        free, cpu, model = random_states(rng, int(rng.integers(257, 900)))
        rows = np.concatenate([free, cpu[:, None], model[:, None]], axis=1)
        unique, inverse = fgd_module._dedup(rows)
        result = fgd_module._dedup_if_halves(rows)
        if len(unique) < len(rows) // 2:
            halved += 1
            assert result is not None
            assert np.array_equal(result[0], unique) and np.array_equal(result[1], inverse)
        else:
            assert result is None
    assert 0 < halved < 200


@pytest.mark.parametrize("policy", ["fgd", "fgd-exact"])
def test_fgd_chooses_the_node_choose_would(policy: str) -> None:
    rng = np.random.default_rng(6)
    nodes = [
        node(f"n{i}", gpus=int(rng.choice([0, 2, 4, 8])), model=str(rng.choice(["A100", "V100"])))
        for i in range(40)
    ]
    state = ClusterState(nodes)
    mix = random_mix(rng)
    chosen = scorer(policy, mix)
    live = []
    for step in range(400):
        pod = mix[int(rng.integers(len(mix)))]
        # Fresh rank arrays, equal or not to the last ones: keys are refolded.
        ranks = node_ranks(len(state), int(rng.integers(3)))
        mask = fit_mask(state, pod)
        feasible = np.flatnonzero(mask)
        if len(feasible) >= 2:
            scores = chosen.score(state, pod, ALL)
            if policy == "fgd":
                assert np.array_equal(scores, np.trunc(scores)) and scores.min() >= 0
            assert chosen.choose_node(state, pod, ALL, mask, ranks) == choose(
                scores[feasible], feasible, ranks
            )
            assert chosen.choose_node(state, pod, feasible, mask, ranks) == choose(
                chosen.score(state, pod, feasible), feasible, ranks
            )
        binding = place_pod(state, pod, chosen, ranks)
        if binding is not None:
            state.bind(binding)
            live.append(binding)
        if live and step % 5 == 0:
            state.unbind(live.pop(int(rng.integers(len(live)))))


@pytest.mark.parametrize("policy", ["fgd", "fgd-exact"])
def test_fgd_scores_follow_the_values_they_come_from(
    policy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every batch product comes out different (as BLAS rounds a batch by its
    # make-up, only more): whatever was recomputed where, copies and rolled-back
    # trials included, the scores served must be those of the cached inputs.
    products = itertools.count()
    weigh = fgd_module.Fragmentation.weigh
    monkeypatch.setattr(
        fgd_module.Fragmentation,
        "weigh",
        lambda self, rows: weigh(self, rows) + 250.0 * (next(products) % 5),
    )
    rng = np.random.default_rng(8)
    nodes = [
        node(f"n{i}", gpus=int(rng.choice([2, 4, 8])), model=str(rng.choice(["A100", "V100"])))
        for i in range(24)
    ]
    state = ClusterState(nodes)
    mix = random_mix(rng)
    chosen = scorer(policy, mix)
    ranks = node_ranks(len(state), 1)

    def place_and_check(target: ClusterState, pod: PodShape) -> None:
        binding = place_pod(target, pod, chosen, ranks)
        for other in (pod, *(mix[int(i)] for i in rng.integers(len(mix), size=3))):
            scores = chosen.score(target, other, ALL)
            # Scored over all nodes: every input is of the state as it is now...
            assert np.array_equal(chosen._before_stamp, target.stamp)
            assert np.array_equal(chosen._pods[other].stamp, target.stamp)
            # ...and every score is of those inputs.
            delta = chosen._before - chosen._pods[other].after
            if policy == "fgd":
                expected = np.trunc(100.0 / (1.0 + np.exp(-delta / 1000.0)))
            else:
                expected = chosen._refine(target, other, np.arange(len(target)), delta)
            assert np.array_equal(scores, expected)
        if binding is not None:
            target.bind(binding)

    for step in range(240):
        pods = [mix[int(i)] for i in rng.integers(len(mix), size=3)]
        if step % 6 == 2:
            with state.trial():
                for pod in pods:
                    place_and_check(state, pod)
            place_and_check(state, pods[0])
        elif step % 6 == 4:
            trial = state.copy()
            for pod in pods:
                place_and_check(trial, pod)
            place_and_check(state, pods[1])
        else:
            place_and_check(state, pods[0])
        if step % 3 == 0 and state.gpu_free.min() < 1000:
            busy = int(np.flatnonzero(state.gpu_free.min(axis=1) < 1000)[0])
            state.set_up(busy, not bool(state.up[busy]))


@pytest.mark.parametrize("policy", ["fgd", "fgd-exact"])
def test_fgd_notices_before_values_recomputed_in_a_batch(
    policy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    products = itertools.count(1)
    weigh = fgd_module.Fragmentation.weigh
    monkeypatch.setattr(
        fgd_module.Fragmentation,
        "weigh",
        lambda self, rows: weigh(self, rows) + 250.0 * next(products),
    )
    state = ClusterState([node(f"n{i}", gpus=8) for i in range(6)])
    chosen = scorer(policy, [ONE] * 3 + [HALF])
    other = PodShape(cpu=2000, gpu_count=2, gpu_milli=1000)
    chosen.score(state, other, ALL)
    chosen.score(state, HALF, ALL)
    # Two nodes change at once on a copy: their before-values are recomputed
    # as one batch there, and again as one batch back on the original, while
    # the stamps ``other`` was scored at stay current.
    copy = state.copy()
    copy.bind(Binding(node=0, gpus=(0,), shape=ONE))
    copy.bind(Binding(node=1, gpus=(0,), shape=ONE))
    chosen.score(copy, HALF, ALL)
    chosen.score(state, HALF, ALL)
    scores = chosen.score(state, other, ALL)
    delta = chosen._before - chosen._pods[other].after
    if policy == "fgd":
        expected = np.trunc(100.0 / (1.0 + np.exp(-delta / 1000.0)))
    else:
        expected = chosen._refine(state, other, np.arange(len(state)), delta)
    assert np.array_equal(scores, expected)
