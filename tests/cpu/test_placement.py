"""Resource pools: `plan` and `check_resources` as pure logic, then real placement groups on a simulated
two-node Ray cluster (`ray.cluster_utils.Cluster`, 4 logical CPUs and 2 fake GPUs per node, loopback only)."""

import os

import pytest

from cluster import pools
from cluster.pools import PlacementError
from rlhf_ray.config import ClusterConfig, PoolConfig, RoleConfig


def cfg(pools_: dict, **roles) -> ClusterConfig:
    """pools_: name -> (nodes, gpus_per_node, cpus_per_node); roles: name -> (pool, count, gpus, cpus[, colocate])."""
    return ClusterConfig(pools={n: PoolConfig(*p) for n, p in pools_.items()},
                         roles={n: RoleConfig(*r) for n, r in roles.items()})


# ---------------------------------------------------------------- plan: no Ray


def test_packed_layout_one_pool():
    p = pools.plan(cfg({"all": (1, 5, 8)}, generator=("all", 2, 1.0, 1.0), reward=("all", 1, 1.0, 0.5),
                       policy=("all", 1, 2.0, 1.0)))
    assert list(p.pools) == ["all"] and p.pools["all"].strategy == "STRICT_PACK"
    layout = p.pools["all"]
    assert layout.node_of_bundle == [0, 0, 0, 0]
    # Biggest first in the packing, but the bundle list keeps one bundle per rank, numbered in node order.
    assert sorted(map(sorted, (b.items() for b in layout.bundles))) == sorted(map(sorted, (
        {"CPU": 1.0, "GPU": 1.0}.items(), {"CPU": 1.0, "GPU": 1.0}.items(), {"CPU": 0.5, "GPU": 1.0}.items(),
        {"CPU": 1.0, "GPU": 2.0}.items())))
    assert layout.bundles[p.roles["policy"].bundles[0]]["GPU"] == 2.0  # one actor spanning 2 GPUs (TP=2)
    assert len({b for r in p.roles.values() for b in r.bundles}) == 4
    assert p.roles["generator"].num_gpus == 1.0 and p.roles["reward"].num_cpus == 0.5


def test_spread_layout_two_pools_and_left_out_roles():
    c = cfg({"rollout": (1, 2, 4), "train": (2, 2, 4)}, generator=("rollout", 2, 1.0, 0.5),
            policy=("train", 4, 1.0, 0.5), critic=("train", 2, 1.0, 0.5))
    p = pools.plan(c, roles=["generator", "policy"])  # e.g. a stage without a critic
    assert set(p.roles) == {"generator", "policy"}
    assert p.pools["rollout"].bundles == [{"CPU": 0.5, "GPU": 1.0}] * 2
    train = p.pools["train"]
    assert train.strategy == "PACK" and train.node_of_bundle == [0, 0, 1, 1]
    assert p.roles["policy"].bundles == [0, 1, 2, 3] and p.roles["policy"].pool == "train"
    with pytest.raises(PlacementError, match="role 'actor' is not configured"):
        pools.plan(c, roles=["actor"])  # not configured


def test_colocated_roles_share_bundles_with_summed_resources():
    c = cfg({"train": (1, 2, 4)}, policy=("train", 2, 0.5, 1.0), reference=("train", 2, 0.5, 0.25, "policy"))
    p = pools.plan(c)
    assert p.pools["train"].bundles == [{"CPU": 1.25, "GPU": 1.0}] * 2
    assert p.pools["train"].members == [[("policy", 0), ("reference", 0)], [("policy", 1), ("reference", 1)]]
    assert p.roles["reference"].bundles == p.roles["policy"].bundles == [0, 1]
    assert (p.roles["reference"].num_gpus, p.roles["reference"].num_cpus) == (0.5, 0.25)
    # A left-out anchor (no policy in this stage): the reference ranks alone, two halves to a GPU.
    assert pools.plan(c, roles=["reference"]).pools["train"].bundles == [{"CPU": 0.5, "GPU": 1.0}]


def test_colocation_errors():
    with pytest.raises(PlacementError, match="1.5 GPUs"):
        pools.plan(cfg({"p": (1, 4, 4)}, policy=("p", 1, 1.0, 0.5), reference=("p", 1, 0.5, 0.5, "policy")))
    with pytest.raises(PlacementError, match="same pool and count"):
        pools.plan(cfg({"p": (1, 4, 4)}, policy=("p", 2, 1.0, 0.5), reference=("p", 1, 0.0, 0.5, "policy")))


def test_fractional_gpus_share_one_gpu_bundle():
    # Two 0.5-GPU generators share one bundle of 1 GPU (so they surely share a GPU); a third gets half a GPU.
    p = pools.plan(cfg({"r": (1, 2, 4)}, generator=("r", 3, 0.5, 0.5)))
    assert p.pools["r"].bundles == [{"CPU": 1.0, "GPU": 1.0}, {"CPU": 0.5, "GPU": 0.5}]
    assert p.roles["generator"].bundles == [0, 0, 1] and p.roles["generator"].num_gpus == 0.5
    # floor(1 / 0.4) = 2 ranks per bundle, never 0.8 + 0.4 spilling over one GPU.
    assert pools.plan(cfg({"r": (1, 2, 4)}, generator=("r", 3, 0.4, 0.1))).roles["generator"].bundles == [0, 0, 1]
    # Three 0.6-GPU actors need three GPUs (a fraction lives inside one GPU), although 3 x 0.6 <= 2.
    with pytest.raises(PlacementError, match="do not pack onto its nodes"):
        pools.plan(cfg({"r": (1, 2, 4)}, generator=("r", 3, 0.6, 0.1)))


def test_pool_too_small_error_says_what_is_asked():
    with pytest.raises(PlacementError) as e:
        pools.plan(cfg({"train": (1, 4, 8)}, policy=("train", 4, 1.0, 0.5), critic=("train", 2, 1.0, 0.5)))
    msg = str(e.value)
    assert "pool 'train' has 1 node x 4 GPUs" in msg and "need 6 GPUs" in msg
    assert "policy (4 x 1 GPU" in msg and "critic (2 x 1 GPU" in msg
    # The total fits (4 GPUs) but a 4-GPU actor cannot span two 2-GPU nodes.
    with pytest.raises(PlacementError, match="2 nodes x 2 GPUs.*do not pack onto its nodes"):
        pools.plan(cfg({"train": (2, 2, 8)}, policy=("train", 1, 4.0, 0.5)))
    with pytest.raises(PlacementError, match="need 0 GPUs, 3 CPUs"):
        pools.plan(cfg({"cpu": (1, 0, 2)}, reward=("cpu", 6, 0.0, 0.5)))


def test_check_resources_names_asked_and_available():
    p = pools.plan(cfg({"rollout": (1, 4, 4), "train": (1, 4, 4)}, generator=("rollout", 4, 1.0, 0.5),
                       policy=("train", 4, 1.0, 0.5)))
    with pytest.raises(PlacementError) as e:
        pools.check_resources(p, {"CPU": 16.0, "GPU": 2.0, "memory": 1e9})
    msg = str(e.value)
    assert "asks for 8 GPU, 4 CPU" in msg and "cluster has 2 GPU, 16 CPU" in msg
    assert "pool 'rollout'" in msg and "pool 'train'" in msg and "generator (4 x 1 GPU, 0.5 CPU)" in msg
    pools.check_resources(p, {"CPU": 16.0, "GPU": 8.0})


def test_check_resources_per_node():
    p = pools.plan(cfg({"train": (1, 4, 4)}, policy=("train", 2, 2.0, 0.5)))
    node = {"NodeManagerAddress": "127.0.0.1", "Alive": True, "Resources": {"CPU": 4.0, "GPU": 2.0}}
    nodes = [dict(node, NodeID="a" * 56), dict(node, NodeID="b" * 56), dict(node, NodeID="c" * 56, Alive=False)]
    with pytest.raises(PlacementError, match=r"nodes cannot hold.*127.0.0.1 \(aaaaaaaa\): 2 GPU, 4 CPU"):
        pools.check_resources(p, {"CPU": 8.0, "GPU": 4.0}, nodes)  # one-node pool, but no node has 4 GPUs
    spread = pools.plan(cfg({"train": (2, 2, 4)}, policy=("train", 2, 2.0, 0.5)))
    pools.check_resources(spread, {"CPU": 8.0, "GPU": 4.0}, nodes)


def test_pinned_pools_use_only_their_nodes():
    c = cfg({"rollout": (1, 2, 4), "train": (1, 2, 4)}, generator=("rollout", 2, 1.0, 0.5),
            policy=("train", 2, 1.0, 0.5))
    c.pools["rollout"].node_resource = "rlhf_pool_b"
    p = pools.plan(c)
    assert all(b["rlhf_pool_b"] == pools.PIN_UNITS for b in p.pools["rollout"].bundles)
    assert all("rlhf_pool_b" not in b for b in p.pools["train"].bundles)
    big = {"NodeManagerAddress": "127.0.0.1", "Alive": True, "Resources": {"CPU": 8.0, "GPU": 4.0}}
    with pytest.raises(PlacementError, match="no node advertises it; start its nodes with"):
        pools.check_resources(p, {"CPU": 8.0, "GPU": 4.0}, [dict(big, NodeID="a" * 56)])
    # One big node would hold both pools, but the rollout pool may only use the node with its resource.
    small_b = {"NodeManagerAddress": "127.0.0.1", "Alive": True, "NodeID": "b" * 56,
               "Resources": {"CPU": 4.0, "GPU": 1.0, "rlhf_pool_b": 1000.0}}
    with pytest.raises(PlacementError, match="nodes cannot hold"):
        pools.check_resources(p, {"CPU": 12.0, "GPU": 5.0}, [dict(big, NodeID="a" * 56), small_b])
    small_b["Resources"]["GPU"] = 2.0
    pools.check_resources(p, {"CPU": 12.0, "GPU": 6.0}, [dict(big, NodeID="a" * 56), small_b])


# ---------------------------------------------------------------- real placement groups on a simulated cluster


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    import ray
    from ray.cluster_utils import Cluster

    # Every node binds 127.0.0.1 (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, set in conftest); `num_gpus` registers
    # fake GPUs that Ray hands out as CUDA_VISIBLE_DEVICES ids without any device behind them.
    assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    # Each node also advertises a pool resource, as deploy/kuberay's worker groups do (for node_resource pinning).
    node = dict(num_cpus=4, num_gpus=2, object_store_memory=80 << 20, node_ip_address="127.0.0.1")
    cluster = Cluster(initialize_head=True, head_node_args=dict(node, include_dashboard=False,
                                                                resources={"rlhf_pool_a": 1000}))
    try:
        cluster.add_node(**node, resources={"rlhf_pool_b": 1000})
        ray.init(address=cluster.address)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def where(placement, role):
    """(node id, GPU ids) of a trivial actor started in each slot of `role`."""
    import ray

    @ray.remote
    class Probe:
        def where(self):
            ctx = ray.get_runtime_context()
            return ctx.get_node_id(), tuple(ctx.get_accelerator_ids()["GPU"])

    actors = [Probe.options(num_cpus=0.01, num_gpus=s.num_gpus, scheduling_strategy=s.scheduling_strategy()).remote()
              for s in placement.slots(role)]
    out = ray.get([a.where.remote() for a in actors], timeout=60)
    for a in actors:
        ray.kill(a)
    return out


@pytest.fixture
def place(ray_cluster):
    made = []

    def _place(c, **kw):
        made.append(pools.create(pools.plan(c, **kw), timeout_s=30))
        return made[-1]

    yield _place
    for placement in made:
        pools.remove(placement)


def test_cluster_is_loopback(ray_cluster):
    import ray

    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert len(nodes) == 2 and {n["NodeManagerAddress"] for n in nodes} == {"127.0.0.1"}
    assert ray.cluster_resources()["GPU"] == 4.0


def test_packed_fractional(place):
    pl = place(cfg({"all": (1, 2, 4)}, generator=("all", 2, 0.5, 0.1), policy=("all", 1, 1.0, 0.1)))
    gens, (pol,) = where(pl, "generator"), where(pl, "policy")
    assert gens[0] == gens[1]  # same node, same GPU: both halves of one bundle
    assert pol[0] == gens[0][0] and set(pol[1]).isdisjoint(gens[0][1])
    table = pools.describe(pl)
    assert table.splitlines()[0].split() == ["role", "rank", "pool", "bundle", "node", "GPU", "CPU"]
    assert "generator  1     all   0       127.0.0.1 (" in table and pol[0][:8] in table


def test_spread_pools_on_separate_nodes(place):
    pl = place(cfg({"rollout": (1, 2, 4), "train": (1, 2, 4)}, generator=("rollout", 2, 1.0, 0.1),
                   policy=("train", 2, 1.0, 0.1)))
    gens, pols = where(pl, "generator"), where(pl, "policy")
    assert gens[0][0] == gens[1][0] and pols[0][0] == pols[1][0] and gens[0][0] != pols[0][0]
    assert gens[0][1] != gens[1][1] and pols[0][1] != pols[1][1]  # whole GPUs: distinct ids
    assert [s.node_id for s in pl.slots("generator")] == [g[0] for g in gens]


def test_pinned_pools_land_on_the_nodes_that_advertise_them(place):
    import ray

    node_of = {r: n["NodeID"] for n in ray.nodes() if n["Alive"] for r in n["Resources"] if r.startswith("rlhf_pool_")}
    for gen_pin, pol_pin in [("rlhf_pool_a", "rlhf_pool_b"), ("rlhf_pool_b", "rlhf_pool_a")]:
        c = cfg({"rollout": (1, 2, 4), "train": (1, 2, 4)}, generator=("rollout", 2, 1.0, 0.1),
                policy=("train", 1, 1.0, 0.1))
        c.pools["rollout"].node_resource, c.pools["train"].node_resource = gen_pin, pol_pin
        pl = place(c)
        assert {g[0] for g in where(pl, "generator")} == {node_of[gen_pin]}
        assert {p[0] for p in where(pl, "policy")} == {node_of[pol_pin]}
        pools.remove(pl)


def test_multi_node_pool_packs_two_per_node(place):
    pl = place(cfg({"train": (2, 2, 4)}, policy=("train", 4, 1.0, 0.1)))
    ranks = where(pl, "policy")
    assert len(set(ranks)) == 4  # four distinct (node, GPU) pairs
    # PACK fills bundles in index order, so Ray's nodes follow the plan: ranks 0-1 on one node, 2-3 on the other.
    assert pl.plan.pools["train"].node_of_bundle == [0, 0, 1, 1]
    assert ranks[0][0] == ranks[1][0] != ranks[2][0] == ranks[3][0]
    assert [s.node_id for s in pl.slots("policy")] == [n for n, _ in ranks]


def test_colocated_roles_land_in_the_same_bundle(place):
    pl = place(cfg({"train": (1, 2, 4)}, policy=("train", 2, 0.5, 0.1), reference=("train", 2, 0.5, 0.1, "policy")))
    pols, refs = where(pl, "policy"), where(pl, "reference")
    assert pols == refs and pols[0][1] != pols[1][1]
    assert [s.bundle_index for s in pl.slots("policy")] == [s.bundle_index for s in pl.slots("reference")]


def test_resource_errors_come_before_any_placement_group(ray_cluster):
    from ray.util import placement_group_table

    before = set(placement_group_table())
    too_big = pools.plan(cfg({"rollout": (1, 4, 4), "train": (1, 4, 4)}, generator=("rollout", 4, 1.0, 0.1),
                             policy=("train", 4, 1.0, 0.1)))
    with pytest.raises(PlacementError, match="asks for 8 GPU.*cluster has 4 GPU"):
        pools.create(too_big)
    no_node = pools.plan(cfg({"train": (1, 4, 4)}, policy=("train", 1, 4.0, 0.1)))  # 4 GPUs exist, not on a node
    with pytest.raises(PlacementError, match="nodes cannot hold"):
        pools.create(no_node)
    assert set(placement_group_table()) == before


def test_timeout_removes_the_groups(ray_cluster):
    import ray
    from ray.util import placement_group, placement_group_table

    # Another job holds one node's GPUs: the totals and the nodes fit on paper, but one pool never gets a node.
    blocker = placement_group([{"GPU": 2.0, "CPU": 0.1}], strategy="STRICT_PACK")
    ray.get(blocker.ready(), timeout=30)
    p = pools.plan(cfg({"rollout": (1, 2, 4), "train": (1, 2, 4)}, generator=("rollout", 2, 1.0, 0.1),
                       policy=("train", 2, 1.0, 0.1)))
    before = set(placement_group_table())
    try:
        with pytest.raises(PlacementError, match=r"not ready after 2 s for pools (rollout|train);.*0 GPU, .* free"):
            pools.create(p, timeout_s=2)
    finally:
        ray.util.remove_placement_group(blocker)
    new = {k: v for k, v in placement_group_table().items() if k not in before}
    assert sorted(v["name"] for v in new.values()) == ["rlhf-ray-pool-rollout", "rlhf-ray-pool-train"]
    assert {v["state"] for v in new.values()} == {"REMOVED"}
