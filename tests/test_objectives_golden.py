"""Golden tests of the DPO family (dpo, ipo, odpo, step_dpo), GRPO and PPO losses.

Every expected value is computed by hand in the test from given per-token log-probs (plain
Python floats, ``math.log``/``math.exp``), not by calling the objective's code; gradients are
checked against finite differences (``torch.autograd.gradcheck``, float64) for DPO and GRPO.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from lrm_engine.objectives.dpo import DPOObjective, dpo_loss, sequence_logps
from lrm_engine.objectives.grpo import GRPOObjective, grpo_advantages, grpo_loss
from lrm_engine.objectives.odpo import ODPOObjective, odpo_offset
from lrm_engine.objectives.ppo import PPOObjective, gae, ppo_loss, ppo_token_rewards
from lrm_engine.objectives.step_dpo import StepDPOObjective
from lrm_engine.train.pref_data import (PrefBatchSource, PrefDataset, PrefRecord, PrefRecordError,
                                        collate_pref, load_pref_jsonl, tokenize_pref,
                                        validate_pref_record)

torch.set_num_threads(1)


def log_sigmoid(x: float) -> float:
    return math.log(1.0 / (1.0 + math.exp(-x)))


# Two pairs, per-token log-probs at token positions (position 0 never scored).
# pair 0: chosen tokens at t=1,2,3; rejected at t=1,2.  pair 1: chosen t=1,2; rejected t=1,2,3.
PI_W = [[0.0, -0.5, -1.0, -0.25], [0.0, -2.0, -0.1, -9.0]]
PI_L = [[0.0, -1.5, -0.5, -7.0], [0.0, -0.3, -0.2, -0.4]]
RF_W = [[0.0, -0.7, -1.1, -0.5], [0.0, -1.0, -0.6, -3.0]]
RF_L = [[0.0, -1.0, -0.9, -2.0], [0.0, -0.5, -0.5, -0.5]]
M_W = [[0, 1, 1, 1], [0, 1, 1, 0]]
M_L = [[0, 1, 1, 0], [0, 1, 1, 1]]


def _hand_seq(tok, mask, average=False):
    out = []
    for row, m in zip(tok, mask):
        s = sum(x for x, k in zip(row, m) if k)
        n = sum(m)
        out.append(s / max(n, 1) if average else s)
    return out


def _t(x, dtype=torch.float64):
    return torch.tensor(x, dtype=dtype)


def _seqs(average=False):
    return [_t(_hand_seq(x, m, average)) for x, m in ((PI_W, M_W), (PI_L, M_L), (RF_W, M_W), (RF_L, M_L))]


# ------------------------------------------------------------------------------------ DPO


def test_sequence_logps_sum_and_mean():
    assert sequence_logps(_t(PI_W), _t(M_W)).tolist() == pytest.approx([-1.75, -2.1])
    assert sequence_logps(_t(PI_W), _t(M_W), average=True).tolist() == pytest.approx([-1.75 / 3, -1.05])


@pytest.mark.parametrize("beta,eps", [(0.1, 0.0), (0.5, 0.0), (0.5, 0.2)])
def test_dpo_sigmoid_loss_by_hand(beta, eps):
    # pair 0: pi_w = -1.75, pi_l = -2.0, ref_w = -2.3, ref_l = -1.9
    #   h = (-1.75 + 2.3) - (-2.0 + 1.9) = 0.55 + 0.1 = 0.65
    # pair 1: pi_w = -2.1, pi_l = -0.9, ref_w = -1.6, ref_l = -1.5
    #   h = (-2.1 + 1.6) - (-0.9 + 1.5) = -0.5 - 0.6 = -1.1
    hs = [0.65, -1.1]
    want = sum(-(1 - eps) * log_sigmoid(beta * h) - eps * log_sigmoid(-beta * h) for h in hs) / 2
    loss, m = dpo_loss(*_seqs(), beta=beta, label_smoothing=eps)
    assert float(loss) == pytest.approx(want, abs=1e-12)
    assert m["reward_margin"] == pytest.approx(beta * (0.65 - 1.1) / 2)
    assert m["reward_chosen"] == pytest.approx(beta * (0.55 - 0.5) / 2)
    assert m["reward_acc"] == 0.5 and m["pairs"] == 2


def test_ipo_loss_by_hand_mean_and_sum():
    beta = 0.25  # target margin 1/(2β) = 2
    # per-token means: pair 0: pi_w = -1.75/3, pi_l = -1.0, ref_w = -2.3/3, ref_l = -0.95
    h0 = (-1.75 / 3 + 2.3 / 3) - (-1.0 + 0.95)
    # pair 1: pi_w = -1.05, pi_l = -0.3, ref_w = -0.8, ref_l = -0.5
    h1 = (-1.05 + 0.8) - (-0.3 + 0.5)
    want = ((h0 - 2.0) ** 2 + (h1 - 2.0) ** 2) / 2
    loss, _ = dpo_loss(*_seqs(average=True), beta=beta, loss_type="ipo")
    assert float(loss) == pytest.approx(want, abs=1e-12)
    # summed log-ratios (ipo_length_norm=False): h = 0.65 and -1.1 as for DPO
    loss, _ = dpo_loss(*_seqs(), beta=beta, loss_type="ipo")
    assert float(loss) == pytest.approx(((0.65 - 2) ** 2 + (-1.1 - 2) ** 2) / 2, abs=1e-12)


def _dpo_from_tokens(beta, loss_type="sigmoid", average=False):
    ref_w, ref_l = _t(_hand_seq(RF_W, M_W, average)), _t(_hand_seq(RF_L, M_L, average))
    mw, ml = _t(M_W), _t(M_L)

    def f(tok_w, tok_l):
        return dpo_loss(sequence_logps(tok_w, mw, average), sequence_logps(tok_l, ml, average),
                        ref_w, ref_l, beta=beta, loss_type=loss_type, label_smoothing=0.1)[0]
    return f


@pytest.mark.parametrize("loss_type,average", [("sigmoid", False), ("ipo", True)])
def test_dpo_gradcheck_against_finite_differences(loss_type, average):
    f = _dpo_from_tokens(0.3, loss_type, average)
    tw = _t(PI_W).requires_grad_(True)
    tl = _t(PI_L).requires_grad_(True)
    assert torch.autograd.gradcheck(f, (tw, tl), eps=1e-6, atol=1e-7)
    # and the analytic gradient of one scored token by hand (sigmoid, ε = 0.1, β = 0.3):
    # d loss / d pi_w[0, t] = (1/2) * β * (-(1-ε) σ(-βh) + ε σ(βh)), h = 0.65
    if loss_type == "sigmoid":
        loss = f(tw, tl)
        loss.backward()
        s = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
        g = 0.5 * 0.3 * (-(0.9) * s(-0.3 * 0.65) + 0.1 * s(0.3 * 0.65))
        assert float(tw.grad[0, 1]) == pytest.approx(g, abs=1e-12)
        assert float(tw.grad[0, 0]) == 0.0 and float(tl.grad[0, 3]) == 0.0  # unscored


def test_dpo_fully_masked_pairs_are_left_out_without_nan():
    mw = _t([[0, 1, 1, 1], [0, 0, 0, 0]])  # pair 1's chosen side has no scored token
    tw = _t(PI_W).requires_grad_(True)
    pi_w, pi_l = sequence_logps(tw, mw), sequence_logps(_t(PI_L), _t(M_L))
    ref_w, ref_l = sequence_logps(_t(RF_W), mw), sequence_logps(_t(RF_L), _t(M_L))
    valid = torch.tensor([True, False])
    loss, m = dpo_loss(pi_w, pi_l, ref_w, ref_l, beta=0.5, valid=valid)
    assert float(loss.detach()) == pytest.approx(-log_sigmoid(0.5 * 0.65), abs=1e-12)  # pair 0
    assert m["pairs"] == 1
    # no valid pair: loss 0, zero gradient, no NaN
    loss, m = dpo_loss(pi_w, pi_l, ref_w, ref_l, beta=0.5, valid=torch.tensor([False, False]))
    loss.backward()
    assert float(loss.detach()) == 0.0 and m["pairs"] == 0
    assert torch.all(tw.grad == 0) and not torch.isnan(tw.grad).any()


# ------------------------------------------------------------------------------------ ODPO


def test_odpo_loss_by_hand():
    beta, alpha = 0.5, 0.7
    rw, rl = _t([0.9, 3.0]), _t([0.4, 1.0])  # r_w - r_l = 0.5 and 2.0
    off = odpo_offset(rw, rl, alpha)
    assert off.tolist() == pytest.approx([alpha * math.log(0.5), alpha * math.log(2.0)])
    want = (-log_sigmoid(beta * 0.65 - alpha * math.log(0.5))
            - log_sigmoid(beta * -1.1 - alpha * math.log(2.0))) / 2
    loss, _ = dpo_loss(*_seqs(), beta=beta, offset=off)
    assert float(loss) == pytest.approx(want, abs=1e-12)


def test_odpo_refuses_pairs_without_a_positive_score_margin(tmp_path):
    with pytest.raises(ValueError, match=r"r_w <= r_l.*pair 1: r_w=1.0, r_l=1.0"):
        odpo_offset(_t([0.9, 1.0]), _t([0.4, 1.0]), 1.0)
    with pytest.raises(ValueError, match="r_w <= r_l"):
        odpo_offset(_t([0.2]), _t([0.4]), 1.0)
    rec = {"prompt": "p", "chosen": "a", "rejected": "b", "score_chosen": 0.2, "score_rejected": 0.5}
    with pytest.raises(PrefRecordError, match=r"must exceed score_rejected"):
        validate_pref_record(rec, require_margin=True)
    validate_pref_record(rec)  # fine for plain DPO
    p = tmp_path / "odpo.jsonl"
    p.write_text(json.dumps(rec) + "\n" + json.dumps(rec | {"score_chosen": 0.9}) + "\n")
    rep = load_pref_jsonl(p, require_margin=True)
    assert rep.skipped == 1 and len(rep.records) == 1
    assert rep.errors[0].startswith(f"{p}:1: score_chosen (r_w=0.2) must exceed")
    # the objective refuses such a pair if it reaches the loss
    obj = ODPOObjective(beta=0.1, alpha=1.0)
    batch = {"score_chosen": _t([0.5]), "score_rejected": _t([0.5])}
    with pytest.raises(ValueError, match="r_w <= r_l"):
        obj.offset(batch, torch.tensor([True]))


# ------------------------------------------------------------------------------------ GRPO

# 3 groups: [1, 0, 0, 1], a single sample [1], all equal [0.5, 0.5]
REWARDS = [1.0, 0.0, 0.0, 1.0, 1.0, 0.5, 0.5]
OFFSETS = [0, 4, 5, 7]


def _hand_adv(rewards, offsets, scale=True):
    out = []
    for a, b in zip(offsets[:-1], offsets[1:]):
        g = rewards[a:b]
        mean = sum(g) / len(g)
        std = math.sqrt(sum((x - mean) ** 2 for x in g) / (len(g) - 1)) if len(g) > 1 else 0.0
        out += [(x - mean) / (std + 1e-4) if scale else x - mean for x in g]
    return out


def test_grpo_advantages_by_hand_single_sample_and_equal_groups_are_zero():
    adv = grpo_advantages(torch.tensor(REWARDS), torch.tensor(OFFSETS))
    # group 0: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = 0.57735...
    s = math.sqrt(1.0 / 3.0)
    assert adv.tolist()[:4] == pytest.approx([0.5 / (s + 1e-4), -0.5 / (s + 1e-4)] * 1 +
                                             [-0.5 / (s + 1e-4), 0.5 / (s + 1e-4)], rel=1e-6)
    assert adv.tolist() == pytest.approx(_hand_adv(REWARDS, OFFSETS), rel=1e-6)
    assert adv[4:].tolist() == [0.0, 0.0, 0.0]  # one-sample group and all-equal group
    assert not torch.isnan(adv).any()
    raw = grpo_advantages(torch.tensor(REWARDS), torch.tensor(OFFSETS), scale_rewards=False)
    assert raw.tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="group_offsets"):
        grpo_advantages(torch.tensor(REWARDS), torch.tensor([0, 4, 6]))


# 3 sequences, T = 5; completion tokens at t >= 2 (row 2 fully masked)
G_LP = [[0.0, -9.0, -0.5, -1.2, -0.3], [0.0, -9.0, -2.0, -0.1, -8.0], [0.0, -1.0, -1.0, -1.0, -1.0]]
G_OLD = [[0.0, -9.0, -0.8, -1.0, -0.3], [0.0, -9.0, -1.5, -0.6, -8.0], [0.0, -1.0, -1.0, -1.0, -1.0]]
G_REF = [[0.0, -9.0, -0.6, -1.4, -0.5], [0.0, -9.0, -1.8, -0.2, -8.0], [0.0, -1.0, -1.0, -1.0, -1.0]]
G_M = [[0, 0, 1, 1, 1], [0, 0, 1, 1, 0], [0, 0, 0, 0, 0]]
G_A = [1.5, -0.8, 0.3]


def _hand_grpo_tokens(beta, eps, eps_hi):
    """Per-token losses l[i][t] by hand (None where masked)."""
    out = []
    for i in range(3):
        row = []
        for t in range(5):
            if not G_M[i][t]:
                row.append(None)
                continue
            rho = math.exp(G_LP[i][t] - G_OLD[i][t])
            A = G_A[i]
            clipped = min(max(rho, 1 - eps), 1 + eps_hi)
            l = -min(rho * A, clipped * A)
            d = G_REF[i][t] - G_LP[i][t]
            l += beta * (math.exp(d) - d - 1)
            row.append(l)
        out.append(row)
    return out


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_grpo_loss_by_hand_every_aggregation(loss_type):
    beta, eps, eps_hi, L = 0.1, 0.2, 0.28, 6
    l = _hand_grpo_tokens(beta, eps, eps_hi)
    toks = [[x for x in row if x is not None] for row in l]
    n_all = sum(len(r) for r in toks)  # 5 tokens (row 2 has none)
    if loss_type == "grpo":  # mean over the 3 sequences of per-sequence token means
        want = sum(sum(r) / max(len(r), 1) for r in toks) / 3
    elif loss_type in ("bnpo", "dapo"):  # token mean over the batch
        want = sum(sum(r) for r in toks) / n_all
    else:  # dr_grpo: sum / (N * L)
        want = sum(sum(r) for r in toks) / (3 * L)
    loss, m = grpo_loss(_t(G_LP), _t(G_M), _t(G_A), old_logps=_t(G_OLD), ref_logps=_t(G_REF),
                        beta=beta, epsilon=eps, epsilon_high=eps_hi, loss_type=loss_type,
                        max_completion_length=L)
    assert float(loss) == pytest.approx(want, abs=1e-12)
    # k3 by hand, token mean
    k3 = [math.exp(G_REF[i][t] - G_LP[i][t]) - (G_REF[i][t] - G_LP[i][t]) - 1
          for i in range(3) for t in range(5) if G_M[i][t]]
    assert m["kl"] == pytest.approx(sum(k3) / 5)
    # row 0, t=2: ρ = e^{0.3} = 1.35 > 1.28 with A > 0: clipped high; row 1, t=3: ρ = e^{0.5},
    # A < 0: not clipped (min picks the unclipped term); row 1, t=2: ρ = e^{-0.5} < 0.8, A < 0
    assert m["clip_high"] == pytest.approx(1 / 5) and m["clip_low"] == pytest.approx(1 / 5)


def test_grpo_on_policy_ratio_is_one_and_gradient_is_policy_gradient():
    lp = _t(G_LP).requires_grad_(True)
    loss, _ = grpo_loss(lp, _t(G_M), _t(G_A), beta=0.0, loss_type="bnpo")
    assert float(loss.detach()) == pytest.approx(-(1.5 * 3 - 0.8 * 2) / 5, abs=1e-12)
    loss.backward()
    # d/dlogp of -ρA with ρ = exp(lp - lp.detach()) = 1: -A / n_tokens
    assert float(lp.grad[0, 2]) == pytest.approx(-1.5 / 5) and float(lp.grad[1, 3]) == pytest.approx(0.8 / 5)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_grpo_gradcheck_against_finite_differences(loss_type):
    old, ref, m, A = _t(G_OLD), _t(G_REF), _t(G_M), _t(G_A)

    def f(lp):
        return grpo_loss(lp, m, A, old_logps=old, ref_logps=ref, beta=0.1, epsilon=0.2,
                         epsilon_high=0.28, loss_type=loss_type)[0]
    assert torch.autograd.gradcheck(f, (_t(G_LP).requires_grad_(True),), eps=1e-6, atol=1e-7)


def test_grpo_edge_cases_no_nan():
    # padding positions holding -inf / huge log-probs never leak into the loss or its gradient
    lp = _t(G_LP)
    lp[0, 0] = -math.inf
    lp[2, :] = -1e4
    lp.requires_grad_(True)
    ref = _t(G_REF)
    ref[2, :] = 50.0
    for lt in ("grpo", "bnpo", "dr_grpo", "dapo"):
        loss, _ = grpo_loss(lp, _t(G_M), _t(G_A), old_logps=_t(G_OLD), ref_logps=ref, beta=0.1,
                            loss_type=lt, max_completion_length=4)
        (g,) = torch.autograd.grad(loss, lp)
        assert torch.isfinite(loss) and torch.isfinite(g).all()
        assert torch.all(g[2] == 0)  # the fully masked row gets no gradient
    # everything masked: loss 0, zero gradient
    lp2 = _t(G_LP).requires_grad_(True)
    for lt in ("grpo", "bnpo", "dr_grpo", "dapo"):
        loss, m = grpo_loss(lp2, torch.zeros(3, 5), _t(G_A), ref_logps=_t(G_REF), beta=0.1,
                            loss_type=lt, max_completion_length=4)
        (g,) = torch.autograd.grad(loss, lp2)
        assert float(loss) == 0.0 and torch.all(g == 0) and m["completion_len"] == 0.0
    # all-equal rewards and single-sample groups: A = 0 -> only the KL term remains
    adv = grpo_advantages(torch.tensor([0.5, 0.5, 1.0]), torch.tensor([0, 2, 3]))
    assert adv.tolist() == [0.0, 0.0, 0.0]
    loss, _ = grpo_loss(_t(G_LP), _t(G_M), adv.double(), old_logps=_t(G_OLD), ref_logps=_t(G_REF),
                        beta=0.1, loss_type="bnpo")
    k3 = [math.exp(G_REF[i][t] - G_LP[i][t]) - (G_REF[i][t] - G_LP[i][t]) - 1
          for i in range(3) for t in range(5) if G_M[i][t]]
    assert float(loss) == pytest.approx(0.1 * sum(k3) / 5, abs=1e-12)


def test_grpo_dapo_accumulation_weights_give_the_step_token_mean():
    """Two micro-batches (rows 0 and 1): Σ w_k loss_k / Σ w_k with w = token counts equals the
    token mean over the whole step (TRL's num_items_in_batch)."""
    obj = GRPOObjective(beta=0.0, loss_type="dapo")
    l = _hand_grpo_tokens(0.0, 0.2, 0.2)
    parts = []
    for i in (0, 1):
        b = {"completion_mask": _t([G_M[i]])}
        loss, _ = grpo_loss(_t([G_LP[i]]), _t([G_M[i]]), _t([G_A[i]]), old_logps=_t([G_OLD[i]]),
                            beta=0.0, loss_type="dapo")
        parts.append((obj.loss_weight(b), float(loss)))
    step = sum(w * x for w, x in parts) / sum(w for w, _ in parts)
    assert [w for w, _ in parts] == [3.0, 2.0]
    assert step == pytest.approx(sum(x for r in l for x in r if x is not None) / 5, abs=1e-12)
    assert GRPOObjective(loss_type="grpo").loss_weight(b) == 1.0


# ------------------------------------------------------------------------------------ PPO


def test_gae_by_hand():
    gamma, lam = 0.9, 0.8
    # one row, completion tokens at t = 1, 2, 3; rewards only at the last one (+ a KL penalty)
    r = _t([[0.0, -0.1, 0.2, 1.0]])
    v = _t([[9.0, 0.5, 0.4, 0.7]])
    m = _t([[0, 1, 1, 1]])
    d3 = 1.0 + gamma * 0.0 - 0.7
    d2 = 0.2 + gamma * 0.7 - 0.4
    d1 = -0.1 + gamma * 0.4 - 0.5
    a3 = d3
    a2 = d2 + gamma * lam * a3
    a1 = d1 + gamma * lam * a2
    adv, ret = gae(r, v, m, gamma, lam)
    assert adv.tolist()[0] == pytest.approx([0.0, a1, a2, a3])
    assert ret.tolist()[0] == pytest.approx([0.0, a1 + 0.5, a2 + 0.4, a3 + 0.7])
    # a fully masked row: zeros, no NaN
    adv, ret = gae(torch.zeros(1, 4), v, torch.zeros(1, 4), gamma, lam)
    assert adv.abs().sum() == 0 and ret.abs().sum() == 0


def test_ppo_token_rewards_and_clipped_loss_by_hand():
    m = _t([[0, 1, 1, 1], [0, 1, 1, 0]])
    old = _t([[0.0, -1.0, -0.5, -0.2], [0.0, -0.3, -0.4, 0.0]])
    ref = _t([[0.0, -0.8, -0.5, -0.6], [0.0, -0.3, -0.1, 0.0]])
    tr = ppo_token_rewards(_t([1.0, 0.0]), m, old, ref, kl_coef=0.5)
    # r_t = -0.5 (old - ref) (+ reward at the last completion token)
    assert tr.tolist()[0] == pytest.approx([0.0, 0.1, 0.0, -0.2 + 1.0])
    assert tr.tolist()[1] == pytest.approx([0.0, 0.0, 0.15, 0.0])

    lp = _t([[0.0, -0.7, -0.5, -0.3], [0.0, -0.5, -0.4, 0.0]])
    A = _t([[0.0, 1.0, -0.5, 2.0], [0.0, -1.0, 0.5, 0.0]])
    R = _t([[0.0, 1.0, 0.2, 0.9], [0.0, 0.0, 0.3, 0.0]])
    V = _t([[0.0, 0.6, 0.1, 1.5], [0.0, 0.1, 0.3, 0.0]])
    Vo = _t([[0.0, 0.5, 0.3, 1.0], [0.0, 0.0, 0.3, 0.0]])
    eps, eps_v, c = 0.2, 0.2, 0.1
    pg, vf, n = 0.0, 0.0, 0
    for i in range(2):
        for t in range(4):
            if not m[i][t]:
                continue
            n += 1
            rho = math.exp(float(lp[i][t]) - float(old[i][t]))
            a = float(A[i][t])
            pg += max(-a * rho, -a * min(max(rho, 1 - eps), 1 + eps))
            v, vo, ret = float(V[i][t]), float(Vo[i][t]), float(R[i][t])
            vc = vo + min(max(v - vo, -eps_v), eps_v)
            vf += max((v - ret) ** 2, (vc - ret) ** 2)
    want = pg / n + c * 0.5 * vf / n
    loss, met = ppo_loss(lp, V, m, A, R, old_logps=old, old_values=Vo, cliprange=eps,
                         cliprange_value=eps_v, vf_coef=c)
    assert float(loss) == pytest.approx(want, abs=1e-12)
    assert met["pg_loss"] == pytest.approx(pg / n) and met["vf_loss"] == pytest.approx(0.5 * vf / n)


# ------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def tok():
    from lrm_engine.tokenization import build_char_tokenizer

    return build_char_tokenizer()


@pytest.fixture(scope="module")
def micro(tok):
    from lrm_engine.models_tiny import make_tiny_llama

    m = make_tiny_llama("micro", tokenizer=tok, seed=5, num_hidden_layers=1)
    return m


def _hand_token_logps(model, ids):
    """log p(ids[t] | ids[:t]) by an independent route: log-softmax written out per position."""
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits.double()
    out = []
    for b in range(ids.shape[0]):
        row = [0.0]
        for t in range(1, ids.shape[1]):
            z = logits[b, t - 1]
            mx = float(z.max())
            lse = mx + math.log(sum(math.exp(float(x) - mx) for x in z))
            row.append(float(z[ids[b, t]]) - lse)
        out.append(row)
    return out


def test_pref_data_tokenisation_and_loader(tok, tmp_path):
    r = PrefRecord("3+4=\n", "3+4=7\nAnswer: 7", "3+4=8\nAnswer: 8", prefix="")
    u = tokenize_pref(tok, r, 64)
    n_ctx = 1 + len("3+4=\n")
    assert u.chosen_mask == [0] * n_ctx + [1] * (len("3+4=7\nAnswer: 7") + 1)
    assert u.chosen_ids[-1] == tok.eos_token_id
    s = PrefRecord("3+4*2=\n", "3+8=11", "3+8=12", prefix="4*2=8\n")
    u = tokenize_pref(tok, s, 64, add_eos=False, completion_suffix="\n")
    assert sum(u.chosen_mask) == len("3+8=11\n") and u.chosen_mask.index(1) == 1 + len("3+4*2=\n4*2=8\n")
    lines = [json.dumps({"prompt": "a", "chosen": "b", "rejected": "c", "score_chosen": 1}),
             "{not json", json.dumps({"prompt": "a", "chosen": ["x"], "rejected": "c"}),
             "", json.dumps({"chosen": "b", "rejected": "c"}),
             json.dumps({"prompt": "a", "initial_reason_steps": "s1\n", "chosen": "b", "rejected": "c"})]
    p = tmp_path / "pairs.jsonl"
    p.write_text("\n".join(lines) + "\n")
    rep = load_pref_jsonl(p)
    assert len(rep.records) == 2 and rep.skipped == 3
    assert [e.split(": ")[0] for e in rep.errors] == [f"{p}:2", f"{p}:3", f"{p}:5"]
    assert "conversational" in rep.errors[1] and "implicit-prompt" in rep.errors[2]
    assert rep.records[1].prefix == "s1\n" and rep.records[0].score_chosen == 1.0


def test_dpo_objective_on_a_model_matches_hand_logps(tok, micro):
    recs = [PrefRecord("3+4=\n", "3+4=7", "3+4=8", 1.0, 0.0),
            PrefRecord("9-5=\n", "9-5=4\nAnswer: 4", "Answer: 5", 0.8, 0.1)]
    batch = collate_pref([tokenize_pref(tok, r, 64) for r in recs], tok.pad_token_id)
    obj = DPOObjective(beta=0.2)
    obj.setup(micro, torch.device("cpu"))
    # at the start the reference is the policy itself: h = 0, loss = -log σ(0) = log 2
    loss, m = obj.loss(micro, batch)
    assert float(loss) == pytest.approx(math.log(2.0), abs=1e-6) and m["pairs"] == 2
    # against a different reference: the margin from hand-computed per-token log-probs
    from lrm_engine.models_tiny import make_tiny_llama

    obj.ref_model = make_tiny_llama("micro", tokenizer=tok, seed=9, num_hidden_layers=1).eval()
    loss, m = obj.loss(micro, batch)
    seq = {}
    for side in ("chosen", "rejected"):
        ids, cm = batch[f"{side}_input_ids"], batch[f"{side}_completion_mask"].tolist()
        for name, model in (("pi", micro), ("ref", obj.ref_model)):
            tl = _hand_token_logps(model, ids)
            seq[name, side] = [sum(x for x, k in zip(row, mk) if k) for row, mk in zip(tl, cm)]
    hs = [(seq["pi", "chosen"][b] - seq["ref", "chosen"][b])
          - (seq["pi", "rejected"][b] - seq["ref", "rejected"][b]) for b in range(2)]
    assert float(loss) == pytest.approx(sum(-log_sigmoid(0.2 * h) for h in hs) / 2, abs=1e-5)
    # odpo and step_dpo take the same batch layout
    odpo = ODPOObjective(beta=0.2, alpha=0.5)
    odpo.ref_model = obj.ref_model
    loss_o, mo = odpo.loss(micro, batch)
    want = (-log_sigmoid(0.2 * hs[0] - 0.5 * math.log(1.0))
            - log_sigmoid(0.2 * hs[1] - 0.5 * math.log(0.7))) / 2
    assert float(loss_o) == pytest.approx(want, abs=1e-5)
    step = StepDPOObjective(beta=0.2)
    step.ref_model = obj.ref_model
    assert float(step.loss(micro, batch)[0]) == pytest.approx(float(loss), abs=1e-6)


def test_dpo_trains_through_the_loop_and_resumes(tok, tmp_path):
    from lrm_engine.models_tiny import make_tiny_llama
    from lrm_engine.train import TrainConfig, Trainer, read_data_log

    recs = [PrefRecord(f"{a}+{b}=\n", f"{a}+{b}={a + b}", f"{a}+{b}={a + b + 1}")
            for a in range(3) for b in range(3)]
    ds = PrefDataset(recs, tok, 32)

    class Interrupt(Exception):
        pass

    def stop_at_3(step, metrics):
        if step == 3:
            raise Interrupt

    def run(d, callbacks=()):
        model = make_tiny_llama("micro", tokenizer=tok, seed=1, num_hidden_layers=1)
        cfg = TrainConfig(total_steps=4, micro_batch_size=4, lr=1e-2, warmup_steps=0,
                          save_every=2, device="cpu", progress=False, tensorboard=False)
        return Trainer(model, DPOObjective(beta=0.5), PrefBatchSource(ds, 4, seed=0), cfg, d,
                       callbacks=callbacks).train()

    full = run(tmp_path / "a")
    assert full.steps == 4 and full.losses[0] == pytest.approx(math.log(2.0), abs=1e-5)
    assert full.losses[-1] < full.losses[0]
    with pytest.raises(Interrupt):  # dies in step 3, after the step-2 checkpoint
        run(tmp_path / "b", [stop_at_3])
    resumed = run(tmp_path / "b")
    assert resumed.resumed_from == 2
    # the reference is rebuilt from the starting policy, not the checkpoint: same losses
    assert resumed.losses == pytest.approx(full.losses[2:], abs=1e-5)
    assert read_data_log(tmp_path / "b") == read_data_log(tmp_path / "a")


def test_grpo_and_ppo_objectives_on_a_model(tok, micro):
    from lrm_engine.objectives.logprobs import token_logps

    # two groups of prompts "1+1=\n" with 2 completions each (one fully masked in group 1)
    prompt = tok.encode("1+1=\n", add_special_tokens=True)
    comps = ["2", "3", "2\n", ""]
    rows = [prompt + tok.encode(c, add_special_tokens=False) + [tok.eos_token_id] for c in comps]
    rows[3] = prompt
    T = max(map(len, rows))
    ids = torch.full((4, T), tok.pad_token_id)
    am = torch.zeros(4, T, dtype=torch.long)
    cm = torch.zeros(4, T, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        am[i, :len(r)] = 1
        cm[i, len(prompt):len(r)] = 1
    batch = {"input_ids": ids, "attention_mask": am, "completion_mask": cm,
             "rewards": torch.tensor([1.0, 0.0, 1.0, 0.0]), "group_offsets": torch.tensor([0, 2, 4]),
             "max_completion_length": 4}
    g = GRPOObjective(beta=0.04, loss_type="dr_grpo")
    g.setup(micro, torch.device("cpu"))
    loss, m = g.loss(micro, batch)
    # on-policy and ref == policy: ρ = 1, k3 = 0; loss = -Σ_i A_i n_i / (N L). dr_grpo takes no
    # std scaling (Dr. GRPO, TRL; issue 13): A = r - mean = ±0.5 (was 0.5 / (sqrt(0.5) + 1e-4)).
    a = 0.5
    n = [2, 2, 3, 0]
    want = -(a * n[0] - a * n[1] + a * n[2] - a * n[3]) / (4 * 4)
    assert float(loss) == pytest.approx(want, abs=1e-5) and m["kl"] == pytest.approx(0.0, abs=1e-6)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in micro.parameters() if p.grad is not None)
    micro.zero_grad(set_to_none=True)

    p = PPOObjective(kl_coef=0.05)
    p.setup(micro, torch.device("cpu"))
    assert set(p.trainable_modules()) == {"value_head"}
    loss, m = p.loss(micro, batch)
    # zero-initialised value head, on-policy, ref == policy: pg loss is -mean of whitened A = 0
    assert m["pg_loss"] == pytest.approx(0.0, abs=1e-6) and torch.isfinite(loss)
    lp = token_logps(micro, ids, am)
    assert lp.shape == (4, T) and float(lp[:, 0].abs().sum()) == 0.0
