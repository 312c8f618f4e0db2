"""tree_grpo: TreeRL segment advantages (golden, hand-computed), the loss on a 2-leaf toy, and the
tree rollout source on a micro policy (prefix sharing counted, rows = leaves)."""

import math

import pytest
import torch

from lrm_engine.objectives.grpo import grpo_loss
from lrm_engine.objectives.tree_grpo import TreeGRPOObjective
from lrm_engine.train.rl_tree import leaf_token_advantages, segment_advantages

torch.set_num_threads(1)

# root 0 -> 1, 2; 1 -> 3, 4; 2 -> 5, 6; 3 -> 7 (a chain: 3 and 7 form one segment)
PARENT = [-1, 0, 0, 1, 1, 2, 2, 3]
REWARD = {7: 1.0, 4: 0.0, 5: 1.0, 6: 1.0}


def test_segment_advantages_golden():
    # V: leaves 7=1, 4=0, 5=1, 6=1; V(3)=1, V(1)=1/2, V(2)=1, V(root)=3/4.
    # P (segment start): 1,2 -> root; 3,4 -> 1; 5,6 -> 2; 7 -> 1 (its parent 3 has one child).
    # G = V - 3/4; L = V - V(P); A = (G + L) * w.
    out = segment_advantages(PARENT, REWARD, "none")
    assert out["value"] == pytest.approx([0.75, 0.5, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    assert out["leaves"] == [4, 2, 2, 1, 1, 1, 1, 1]
    assert out["global"] == pytest.approx([0, -0.25, 0.25, 0.25, -0.75, 0.25, 0.25, 0.25])
    assert out["local"] == pytest.approx([0, -0.25, 0.25, 0.5, -0.5, 0.0, 0.0, 0.5])
    assert out["advantage"] == pytest.approx([0, -0.5, 0.5, 0.75, -1.25, 0.25, 0.25, 0.75])
    r2 = 1 / math.sqrt(2)
    sq = segment_advantages(PARENT, REWARD, "sqrt")["advantage"]
    assert sq == pytest.approx([0, -0.5 * r2, 0.5 * r2, 0.75, -1.25, 0.25, 0.25, 0.75])
    once = segment_advantages(PARENT, REWARD, "once")["advantage"]
    assert once == pytest.approx([0, -0.25, 0.25, 0.75, -1.25, 0.25, 0.25, 0.75])


def test_segment_advantages_refuses_bad_trees():
    with pytest.raises(ValueError, match="no reward for leaves"):
        segment_advantages(PARENT, {7: 1.0}, "sqrt")
    with pytest.raises(ValueError, match="only leaves"):
        segment_advantages(PARENT, REWARD | {1: 1.0}, "sqrt")
    with pytest.raises(ValueError, match="shared_weight"):
        segment_advantages(PARENT, REWARD, "mean")


def test_leaf_token_advantages_follow_the_path():
    # token lengths: root (prompt) 5, then nodes 1..7
    tl = [5, 2, 1, 3, 1, 2, 2, 1]
    adv = segment_advantages(PARENT, REWARD, "none")["advantage"]
    rows = leaf_token_advantages(PARENT, tl, [7, 4], adv)
    assert rows[0] == pytest.approx([-0.5] * 2 + [0.75] * 3 + [0.75])  # 1, 3, 7
    assert rows[1] == pytest.approx([-0.5] * 2 + [-1.25])  # 1, 4


class _FixedLM(torch.nn.Module):
    """A 'model' whose next-token logits are a trainable table [T, V] (same for every row)."""

    def __init__(self, T=8, V=6):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.table = torch.nn.Parameter(torch.randn(T, V, generator=g))

    def forward(self, input_ids, attention_mask=None, **kw):
        from types import SimpleNamespace

        N, T = input_ids.shape
        return SimpleNamespace(logits=self.table[:T].unsqueeze(0).expand(N, T, -1))


def _toy_batch():
    # 2-leaf toy: root (prompt 2 tokens) -> a (2 tokens) -> {b (1 token, reward 1), c (2 tokens, reward 0)}.
    # V(b)=1, V(c)=0, V(a)=V(root)=1/2: A(a)=0, A(b)=(1/2)+(1/2)=1, A(c)=-1 (|L|=1: w=1).
    parent, tl, leaves = [-1, 0, 1, 1], [2, 2, 1, 2], [2, 3]
    seg = segment_advantages(parent, {2: 1.0, 3: 0.0}, "sqrt")
    assert seg["advantage"] == pytest.approx([0, 0, 1, -1])
    adv = leaf_token_advantages(parent, tl, leaves, seg["advantage"])
    ids = torch.tensor([[1, 2, 3, 4, 5, 0, 0], [1, 2, 3, 4, 2, 3, 0]])
    am = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 0]])
    cm = torch.tensor([[0, 0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 0]])
    A = torch.zeros(2, 7)
    A[0, 2:5] = torch.tensor(adv[0])
    A[1, 2:6] = torch.tensor(adv[1])
    return {"input_ids": ids, "attention_mask": am, "completion_mask": cm, "advantages": A,
            "rewards": torch.tensor([1.0, 0.0]), "group_offsets": torch.tensor([0, 2])}


def test_tree_grpo_loss_on_a_two_leaf_toy_equals_the_hand_computation():
    batch = _toy_batch()
    model = _FixedLM()
    obj = TreeGRPOObjective(beta=0.0, loss_type="grpo")
    loss, m = obj.loss(model, batch)
    # ratio 1 (on-policy): per-token loss = -A. Row b: (0 + 0 - 1)/3; row c: (0 + 0 + 1 + 1)/4.
    assert float(loss.detach()) == pytest.approx(((-1 / 3) + 0.5) / 2)
    # gradient wrt the log-prob of each completion token: -A_t / (len_i * N)
    from lrm_engine.objectives.logprobs import token_logps

    lp = token_logps(model, batch["input_ids"], batch["attention_mask"]).detach().requires_grad_(True)
    l2, _ = grpo_loss(lp, batch["completion_mask"], batch["advantages"], beta=0.0)
    l2.backward()
    g = lp.grad
    assert g[0, 2:5].tolist() == pytest.approx([0, 0, -1 / 6])
    assert g[1, 2:6].tolist() == pytest.approx([0, 0, 1 / 8, 1 / 8])
    assert float(g[:, :2].abs().sum()) == 0.0
    # bnpo: token mean over the 7 completion tokens: (-1 + 2) / 7
    l3, _ = TreeGRPOObjective(beta=0.0, loss_type="bnpo").loss(model, batch)
    assert float(l3.detach()) == pytest.approx(1 / 7)
    # clipped: old log-probs 0.5 lower everywhere -> ratio e^0.5 > 1.2; A>0 clipped at 1.2,
    # A<0 takes the ratio (min(-ρA... ) i.e. max of losses): row b: -1.2/3, row c: 2·e^0.5/4
    old = lp.detach() - 0.5
    l4, m4 = grpo_loss(lp.detach(), batch["completion_mask"], batch["advantages"], old_logps=old,
                       beta=0.0, epsilon=0.2)
    assert float(l4) == pytest.approx((-1.2 / 3 + 2 * math.exp(0.5) / 4) / 2, rel=1e-5)
    assert m4["clip_high"] == pytest.approx(1 / 7)


def test_tree_grpo_needs_per_token_advantages():
    batch = _toy_batch()
    batch["advantages"] = batch["advantages"][:, 0]
    with pytest.raises(ValueError, match="per-token advantages"):
        TreeGRPOObjective(beta=0.0).loss(_FixedLM(), batch)
    with pytest.raises(ValueError, match="shared_weight"):
        TreeGRPOObjective(shared_weight="mean")


def test_tree_rollout_source_shares_prefixes(tmp_path):
    from lrm_builtin.tasks import ArithTask
    from lrm_engine.models_tiny import make_tiny_llama
    from lrm_engine.tokenization import build_char_tokenizer
    from lrm_engine.train import TrainConfig, Trainer
    from lrm_engine.train.rl_tree import TreeRolloutSource

    task = ArithTask(num_train=20, num_test=5)
    tok = build_char_tokenizer(extra_chars=task.step.delimiter + task.step.answer_prefix)
    model = make_tiny_llama("micro", tokenizer=tok, seed=0, num_hidden_layers=1)
    src = TreeRolloutSource(model, tok, task, prompts_per_batch=2, tree_width=2, branch_factor=2,
                            branch_depth=2, max_steps=3, max_step_tokens=6, seed=0)
    batch, idx = src.next_batch()
    off = batch["group_offsets"].tolist()
    assert off[0] == 0 and off[-1] == batch["input_ids"].shape[0] and len(off) == 3
    assert all(1 <= b - a <= 4 for a, b in zip(off[:-1], off[1:]))
    cm, adv = batch["completion_mask"], batch["advantages"]
    assert adv.shape == cm.shape and float(adv[cm == 0].abs().sum()) == 0.0
    log = batch["log"]
    # tree: prompts once per tree and shared steps once; i.i.d.: every leaf's full path
    assert log["tokens_per_leaf"] < log["iid_tokens_per_leaf"]
    assert log["iid_tokens_per_leaf"] == pytest.approx(float(batch["attention_mask"].sum()) / len(cm))
    # rows of one tree share their prompt and (for siblings of the second level) the first step
    a, b = off[0], off[1]
    plen = int((cm[a] == 0).long().cumprod(0).sum())
    assert torch.equal(batch["input_ids"][a, :plen], batch["input_ids"][b - 1, :plen])
    cfg = TrainConfig(total_steps=1, micro_batch_size=1, lr=1e-3, warmup_steps=0, device="cpu",
                      progress=False, tensorboard=False)
    src.position = 0
    res = Trainer(model, TreeGRPOObjective(beta=0.0), src, cfg, tmp_path).train()
    assert res.steps == 1 and math.isfinite(res.losses[0])
    assert src.totals()["trees"] == 4  # the batch above and the trainer's


def test_tree_grpo_via_cli_reports_prefix_sharing(tmp_path):
    import json
    from pathlib import Path

    from conftest import run_lrm
    from rl_fixtures import micro_models, small_task

    pol, _ = micro_models(tmp_path / "models", small_task())
    args = ["train", "objective=tree_grpo", f"runtime.output_dir={tmp_path}", "task=arith",
            "task.min_steps=2", "task.max_steps=2", "task.max_operand=9", "task.max_value=99",
            "task.num_train=64", "task.num_test=16", "task.shape=chain", "runtime.num_threads=1",
            "runtime.progress=false", "objective.train.total_steps=2", "objective.train.warmup_steps=0",
            "objective.train.save_every=1", "objective.rollout.prompts_per_batch=2",
            "objective.rollout.branch_depth=2", "objective.rollout.max_steps=3",
            "objective.rollout.max_step_tokens=8", "objective.eval.enabled=false"]
    r = run_lrm(*args, env={"LRM_DEFAULT_POLICY": pol}, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["steps"] == 2 and res["objective"] == "tree_grpo"
    run = Path(res["run_dir"])
    tot = json.loads((run / "result.json").read_text())["metrics"]["rollout_totals"]
    assert tot["trees"] == 4 and 4 <= tot["leaves"] <= 16
    assert tot["tokens_computed"] < tot["iid_tokens"]  # shared prompts and steps computed once
    ck = json.loads((run / "checkpoints" / "step_2" / "trainer_state.json").read_text())
    assert ck["data"]["position"] == 4 and ck["data"]["totals"]["trees"] == 4


def test_bench_rl_exits_nonzero_when_every_row_fails(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(repo / "bench" / "rl.py"), "--objectives", "no_such_objective",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=repo)
    assert r.returncode != 0
    assert "no_such_objective" in r.stdout.strip().splitlines()[-1]


def test_entropy_branching_branches_the_most_surprising_step():
    from lrm_builtin.tasks import ArithTask
    from lrm_engine.models_tiny import make_tiny_llama
    from lrm_engine.tokenization import build_char_tokenizer
    from lrm_engine.train.rl_tree import TreeRolloutSource

    task = ArithTask(num_train=20, num_test=5)
    tok = build_char_tokenizer(extra_chars=task.step.delimiter + task.step.answer_prefix)
    model = make_tiny_llama("micro", tokenizer=tok, seed=0, num_hidden_layers=1)
    src = TreeRolloutSource(model, tok, task, prompts_per_batch=2, tree_width=3, branch_factor=2,
                            branch_depth=2, branch_top=1, max_steps=3, max_step_tokens=6, seed=0)
    ctx = src._ctx(7)
    seen = []
    real = ctx.expand

    def spy(tree, nodes, k, **kw):
        e = real(tree, nodes, k, **kw)
        seen.append((nodes.clone(), k, e.children.clone(), e.logprob_sum.clone()))
        return e

    ctx.expand = spy
    prompts = [tok.encode(task.prompt(ex.problem)) for ex in src.examples[:2]]
    tree = ctx.new_tree(prompts, num_actions=3, capacity=64)
    src.grow(ctx, tree)
    _, _, kids, lp = seen[0]  # the root's 3 children and their step log-probs
    checked = 0
    for b in range(2):
        ch = kids[b, 0]
        open_ = [i for i in range(3) if not bool(tree.terminal[b, ch[i]])]
        if not open_:
            continue
        s = {i: -float(lp[b, 0, i]) / max(int(tree.token_length[b, ch[i]]), 1) for i in open_}
        want = max(s, key=s.get)
        nchild = [int((tree.parent[b, : int(tree.num_nodes[b])] == int(ch[i])).sum()) for i in range(3)]
        assert nchild[want] == 2  # the most surprising open step is branched (k = 2)
        assert all(nchild[i] == 1 for i in open_ if i != want)  # the others continue as paths
        checked += 1
    assert checked > 0
    ctx.policy.release(tree)
