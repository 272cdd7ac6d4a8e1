"""Pure choices of a PPO run: which roles it starts (fleet), the order of a mini-batch's rows (rollout), and the
fleet's one revive-and-retry path (with fake actor groups)."""

from types import SimpleNamespace

import pytest
import torch

from rlhf_ray import rollout
from rlhf_ray.config import load_config
from rlhf_ray.stages import fleet, push


def test_roles_a_ppo_run_places():
    roles = lambda *over: load_config(None, list(over)).stage_roles("ppo")  # noqa: E731
    assert "reference" in roles()  # default β 0.05
    grpo = ["ppo.advantage=grpo", "rollout.n_samples=2"]
    assert roles("ppo.kl_coef=0", *grpo) == ["generator", "policy"]
    assert "reference" in roles("ppo.kl_coef=0", "ppo.kl_target=6")
    assert "reference" in roles("ppo.kl_coef=0", "model.reference=some/ref")
    assert roles("ppo.kl_coef=0", "ppo.advantage=gae", "model.reward=rm") == ["generator", "policy", "critic", "reward"]
    # Reward functions (and the gold judge) run in actors of their own role, placed like the others.
    fn = "reward.functions=[{function: rlhf_ray.rewards:exact_answer}]"
    assert roles("ppo.kl_coef=0", *grpo, fn)[-1] == "reward_fn"
    assert load_config(None, []).stage_roles("dpo") == ["reference", "policy"]


def test_mini_batch_rows_ordered_by_prompt_length():
    # 4 rows, prompts of 3, 1, 2, 3 real tokens left-padded to P = 3, then T = 2 response columns
    attention = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 0], [0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    response = attention[:, 3:]
    idx = torch.tensor([3, 1, 0, 2])
    assert rollout.by_prompt_length(idx, response, attention).tolist() == [1, 2, 3, 0]  # stable among equals


# ---------------------------------------------------------------- the fleet's one revive-and-retry path, with fakes


class FakeActor:
    def __init__(self, name: str):
        self.name = name
        self.open_weight_transfer = SimpleNamespace(remote=lambda info: ("open", name))
        self.update_weights = SimpleNamespace(remote=lambda version, layout, refs=None: ("load", name, version))


class FakeGroup:
    """What Fleet.revive and WeightPush touch of an ActorGroup: actors, restarts, restart, call, get; calls are
    recorded. `die`: phases whose next `get` raises the death of these ranks, once."""

    def __init__(self, role: str, n: int, log: list, die: dict | None = None):
        self.role, self.log, self.restarts, self.distributed, self.die = role, log, 0, False, die or {}
        self.actors = [FakeActor(f"{role}-{r}") for r in range(n)]

    def __len__(self):
        return len(self.actors)

    def restart(self, rank: int, timeout_s: float) -> None:
        self.restarts += 1
        self.actors[rank] = FakeActor(f"{self.role}-{rank}#{self.restarts}")
        self.log.append(("restart", self.role, rank))

    def get(self, refs, timeout_s, phase, ranks=None):
        from cluster.actor_group import DIED, GroupError

        self.log.append(("get", self.role, phase))
        if phase in self.die:
            raise GroupError(self.role, self.die.pop(phase), phase, DIED)
        return [{"version": r[2], "bytes": 1} if isinstance(r, tuple) and r[0] == "load" else None for r in refs]

    def call(self, fn, timeout_s, phase):  # the policy learner: the plan, the exported buckets
        self.log.append(("call", self.role, phase))
        return [["plan-or-refs"]]


def _fleet(log: list, version: int = 0, start_version: int = 0, max_restarts: int = 3, die=None) -> fleet.Fleet:
    f = fleet.Fleet(None, FakeGroup("generator", 2, log, die), FakeGroup("reference", 1, log),
                    FakeGroup("policy", 1, log), None, None, None, timeout_s=5.0, start_version=start_version,
                    max_restarts=max_restarts)
    f.push = push.WeightPush("object_store", "gloo", f.policy, f.generators, 1, 5.0, version, None, f._restart)
    f._placed_again = lambda group, rank, phase: None  # no placement groups here (tests/e2e/test_nodes.py has them)
    return f


def _calls(group, keys_ranks, made: list, **kw) -> fleet.Calls:
    calls = fleet.Calls(group, **kw)
    for key, rank in keys_ranks:
        calls.send(key, rank, lambda actor, key=key: made.append((key, actor.name)) or f"ref-{key}-{actor.name}")
    return calls


def test_a_dead_generator_is_replaced_brought_to_the_push_version_and_its_share_sent_again(capsys):
    log, made = [], []
    f = _fleet(log, version=3)
    calls = _calls(f.generators, [(0, 0), (1, 1)], made, say=lambda i: f"share {i} again")
    f.revive(calls, 1, "generate")
    # it opens the transfer alone, then loads version 3 before its share is sent again
    assert log == [("restart", "generator", 1), ("get", "generator", "sync: open"), ("call", "policy", "sync: plan"),
                   ("call", "policy", "sync: export"), ("get", "generator", "sync: push")]
    assert made[-1] == (1, "generator-1#1") and calls.items[1].ref == "ref-1-generator-1#1"
    out = capsys.readouterr().out
    assert "generate: generator-1 died; starting a replacement" in out and "generate: share 1 again" in out
    assert "sync: weights for generator-1: at version 3" in out
    log.clear()  # the next push opens the transfer on every generator again: the replacement was opened alone
    assert [r["version"] for r in f.push(4)] == [4, 4] and f.push.version == 4
    assert log == [("get", "generator", "sync: open"), ("call", "policy", "sync: export"),
                   ("get", "generator", "sync: push")]


def test_a_generator_replaced_at_the_start_version_loads_nothing_and_one_lost_in_a_push_gets_it_again():
    log, made = [], []
    f = _fleet(log, version=2, start_version=2)
    f.revive(_calls(f.generators, [(0, 0)], made), 0, "generate")
    assert [e[0] for e in log] == ["restart"]
    log.clear()
    f = _fleet(log, version=4, die={"sync: push": [1]})
    f.push.open([0, 1])
    log.clear()
    assert [r["version"] for r in f.push(5)] == [5, 5] and f.push.version == 5
    assert log == [("call", "policy", "sync: plan"), ("call", "policy", "sync: export"),
                   ("get", "generator", "sync: push"), ("restart", "generator", 1),  # lost mid-push: replaced
                   ("get", "generator", "sync: open"), ("call", "policy", "sync: export"),
                   ("get", "generator", "sync: push")]  # and the push made again, to every generator


def test_calls_on_an_actor_already_replaced_are_only_sent_again():
    """Two shares on one reference rank (or two batches on one generator): the first failure replaces the actor,
    the second is sent to the replacement without a second restart."""
    log, made = [], []
    f = _fleet(log)
    calls = _calls(f.reference, [(0, 0), (1, 0)], made)
    f.revive(calls, 0, "score: reference")
    f.revive(calls, 1, "score: reference")
    assert [e for e in log if e[0] == "restart"] == [("restart", "reference", 0)]
    assert made[-2:] == [(0, "reference-0#1"), (1, "reference-0#1")]
    assert f.restarts() == 1


def test_replacements_stop_at_max_restarts():
    from cluster.actor_group import GroupError

    log, made = [], []
    f = _fleet(log, max_restarts=1)
    calls = _calls(f.reference, [(0, 0)], made)
    f.revive(calls, 0, "score: reference")
    calls.items[0].actor = f.reference.actors[0]  # the replacement died too
    with pytest.raises(GroupError, match="1 replacements already"):
        f.revive(calls, 0, "score: reference")



def test_the_reference_and_the_policy_learner_score_at_the_sampling_temperature():
    """rollout.temperature reaches every forward that stands for the sampling policy (start_fleet sets it)."""
    log, asked = [], []
    f = _fleet(log)
    f.temperature = 0.7
    f.reference.actors[0].logprobs = SimpleNamespace(remote=lambda share, t: asked.append(("reference", t)))
    f.scoring().send(0, "share")
    f.policy.shard = lambda batch: [batch]
    f.policy.map = lambda fn: [fn(SimpleNamespace(logprobs=SimpleNamespace(
        remote=lambda shard, T, t: asked.append(("policy", T, t)))), 0)]
    f.old_logprobs(SimpleNamespace(response_mask=torch.ones(2, 3), input_ids=None, attention_mask=None))
    assert asked == [("reference", 0.7), ("policy", 3, 0.7)]
    assert fleet.Fleet(None, *[None] * 6, timeout_s=1.0).temperature == 1.0  # the default: as before


class Recorder:
    """A generator's methods that a colocated push calls, each recording (method, args) in one shared log."""

    def __init__(self, name: str, log: list):
        for method in ("sleep", "wake", "open_weight_transfer", "update_weights", "score"):
            setattr(self, method, SimpleNamespace(remote=lambda *a, m=method: log.append((name, m, a)) or (m, a)))


def test_a_colocated_generator_sleeps_while_the_policy_trains_and_wakes_weights_then_kv_cache_for_the_sync():
    """rollout.engine.sleep_level: the engine's calls in order, as vLLM's sleep mode needs them: sleep after the
    batch is generated, weights back before the push writes into them, the KV cache back before the probe scores
    and the next batch samples."""
    log = []
    gens, pol = FakeGroup("generator", 1, []), FakeGroup("policy", 1, [])
    gens.actors = [Recorder("generator-0", log)]
    gens.get = gens.call = lambda refs_or_fn, *a, **k: (
        [refs_or_fn(gens.actors[0], 0)] if callable(refs_or_fn) else
        [{"version": r[1][0], "bytes": 1} if r[0] == "update_weights" else [[0.0]] for r in refs_or_fn])
    pol.call = lambda fn, *a: [["plan"]] if "plan" in a[-1] or "export" in a[-1] else [torch.zeros(1, 1)]
    probe = push.Probe([1, 2], [3], 1e-3)
    owner = push.WeightPush("object_store", "gloo", pol, gens, 1, 5.0, 0, probe, sleep_level=2)
    owner.open([0])
    owner.rest()  # the batch is collected: the policy trains now
    owner(1)
    assert [(m, a) for _, m, a in log if m != "open_weight_transfer"] == [
        ("sleep", (2,)), ("wake", (["weights"],)), ("update_weights", (1, ["plan"], ["plan"])),
        ("wake", (["kv_cache"],)), ("score", ([[1, 2]], [[3]]))]
    log.clear()
    push.WeightPush("object_store", "gloo", pol, gens, 1, 5.0, 1, None).rest()  # awake generators: no call
    assert log == []


def test_a_lost_learner_or_an_unplaceable_node_stops_naming_the_checkpoint(tmp_path):
    from cluster.actor_group import DIED, GroupError, NodeLost
    from rlhf_ray.runtime import checkpoint

    (tmp_path / "checkpoints" / "ppo" / "step_000004").mkdir(parents=True)
    (tmp_path / "checkpoints" / "ppo" / "step_000004" / "state.json").write_text("{}")
    learner = checkpoint.learner_lost(GroupError("policy-learner", [0], "train: policy", DIED), tmp_path, "ppo")
    assert "cannot be replaced inside its process group" in str(learner) and "step_000004" in str(learner)
    lost = NodeLost("generator", [1], "generate", "its node was lost and pool 'rollout' has no node for it")
    stop = checkpoint.learner_lost(lost, tmp_path, "ppo")
    assert str(stop).startswith("generate: its node was lost") and "the cluster has no room for it" in str(stop)
    assert f"the same command resumes from {tmp_path / 'checkpoints' / 'ppo' / 'step_000004'}" in str(stop)
    # a generator that died is replaced, not stopped for
    assert checkpoint.learner_lost(GroupError("generator", [0], "generate", DIED), tmp_path, "ppo") is None


def test_batches_in_flight_resume_onto_another_generator_count_and_a_removed_rank_is_drained(monkeypatch):
    monkeypatch.setattr(fleet.ray, "put", lambda answer: f"stored {answer}")  # no object store in unit tests
    log = []
    group = FakeGroup("generator", 1, log)
    calls = fleet.Calls.answered(group, ["share 0", "share 1", "share 2"])  # split over 3, resumed onto 1
    assert [c.rank for c in calls.items.values()] == [0, 0, 0] and all(c.kept for c in calls.items.values())
    assert calls.on(0).items == {}  # answered already: nothing to drain
    two = FakeGroup("generator", 2, log)
    calls = fleet.Calls(two)
    for key in range(4):
        calls.send(key, key % 2, lambda actor: f"ref of {actor}")
    calls.keep(3, "answer 3")
    assert sorted(calls.on(1).items) == [1]  # what generator-1 still owes, before it is removed
