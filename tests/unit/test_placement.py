"""Placement: filters, scorers and GPU choice on small hand-made clusters."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.domain.cluster import ClusterState
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
from shoal.policy.placement.base import register_scorer


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
