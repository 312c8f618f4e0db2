"""``prm``: process reward model losses at step tags — token-level (Math-Shepherd, a
``prm_token`` PRM), or a classification / value head (``prm_head``, ``value_head``; see Heads).

The PRM is a causal LM. After every step of a solution comes the step tag (the task's step
delimiter, ``"\\n"`` by default); at each tag position the model's LM head is read at two rows
only — the *good* token and the *bad* token — and the step score is

    p_good = softmax([z_good, z_bad])[0] = sigmoid(z_good - z_bad),   z = h_tag @ W_head[row] (+ b)

i.e. the full-vocabulary distribution restricted to {good, bad} and renormalised (exactly what
:func:`lrm_engine.ops.prm_head.token_prm_scores` computes at inference).

Token choice for the character tokenizer: good = ``"+"``, bad = ``"-"`` — Math-Shepherd's own
label tokens, both single characters of the fixed vocabulary (no vocabulary change, so a PRM
can start from the SFT policy's weights). Their ordinary meaning does not interfere: the head is
read only at tag positions, where the PRM is trained to emit them. Any two distinct tokens can
be chosen (``good_token`` / ``bad_token``; each must encode to exactly one token).

Batch (:func:`lrm_engine.train.prm_data.collate_prm`): ``input_ids [B, T]``,
``attention_mask [B, T]``, ``tag_mask [B, T]`` bool (True at step-tag positions), ``step_labels
[B, T]`` float (the step's label in [0, 1] at tag positions; values elsewhere are never read).

Loss, exactly: with ``S = {(b, t) : tag_mask[b, t]}`` and ``y`` the target at each tag,

    loss = - (1 / |S|) * sum_{(b,t) in S} [ y * log p_good + (1 - y) * log (1 - p_good) ]

``label_mode="hard"``: ``y = 1[label >= hard_threshold]`` (cross-entropy against the hard
label; with ``hard_threshold=0.5`` a bool label is itself); ``label_mode="soft"``: ``y = label``
(BCE with a soft target, e.g. Math-Shepherd's soft estimate). With gradient accumulation the
loop weights micro-batches by ``|S|`` (:meth:`loss_weight`), so a step is the per-tag mean over
its micro-batches. A batch with no tag gives loss 0 with a zero gradient (never NaN).

Computation: by default the decoder's last hidden states are gathered at the tag positions and
multiplied by the two head rows (P x 2 x d, never the full-vocabulary logits); this is exact for
models whose output head is a plain linear layer (Llama, Qwen2, Mistral, the tiny models).
``full_logits=True`` takes the two columns of the model's full logits instead (for heads with
scaling or soft-capping).

Read-out (``readout``). ``"tag"`` is the above. ``"likelihood"`` trains the same cross-entropy
on a generative step score instead of the two tag rows: the PRM's own probability of the step's
least likely token,

    p_good = min_{t in step} p_theta(x_t | x_<t),   p_bad = 1 - p_good

(the tag is left out; the step's first token is predicted at the previous tag, so a step
started wrongly — e.g. an answer line too early — is judged too). This score judges the step
itself, not the prefix: the prefix score is the running minimum over the steps (what min-
aggregated search ranks by). So only the steps up to each solution's first bad-labelled step
(``label < hard_threshold``) enter the loss: the later ones are bad because of that step (prefix
labels), and teaching the model that their correct arithmetic is unlikely would unteach it. A good-labelled step raises the probability of its weakest token
(language-model training on what the labels call good), a bad-labelled one lowers it; the
``prm_token`` reward with ``readout=likelihood`` reads the same quantity at search time.

Heads (``head``). ``"prm_token"`` is all of the above (a causal LM read at two token rows).
The other two train a token-classification model (``LlamaForTokenClassification``: the
decoder's final hidden state at each tag through a linear ``score`` head, the layout the
``prm_head`` / ``value_head`` rewards read):

- ``"prm_head"`` (Qwen2.5-Math-PRM): two classes, class 1 = good step (the reward's default
  ``positive_class``); ``z = score(h_tag)`` is ``[|S|, 2]`` = (z_bad, z_good) and the loss is the
  same two-class cross-entropy as above with ``p_good = softmax(z)[1]`` — Qwen2.5-Math-PRM is
  trained with cross-entropy on hard step labels at its step-separator token (label_mode=hard).
- ``"value_head"`` (ReST-MCTS*'s value model V_theta, also rStar's): one output,
  ``v = sigmoid(score(h_tag))``, and by default (``value_loss="mse"``, ReST-MCTS*'s loss)

      loss = (1 / |S|) * sum_{(b,t) in S} (v - y)^2

  against the target ``y`` (``label_mode="soft"`` for soft value targets such as Monte-Carlo
  estimates; ``"hard"`` thresholds them); ``value_loss="bce"`` is ``-[y log v + (1-y) log(1-v)]``.

Metrics: ``loss``, ``step_acc`` (``p_good >= 0.5`` agrees with ``label >= hard_threshold``),
``p_good`` (mean), ``good_frac`` (share of tags labelled good), ``tags`` (``|S|``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UserError
from .base import ObjectiveBase


class ObjectiveOptionError(UserError, ValueError):
    """A bad objective option (printed by ``lrm`` as one line naming the field, exit 2)."""

LABEL_MODES = ("hard", "soft")
READOUTS = ("tag", "likelihood")
# Model kinds the objective trains (the reward that reads each has the same name).
HEADS = ("prm_token", "prm_head", "value_head")
VALUE_LOSSES = ("mse", "bce")
# Output count of each head's linear layer (prm_token reads two rows of the LM head instead).
HEAD_OUTPUTS = {"prm_head": 2, "value_head": 1}


class PRMObjective(ObjectiveBase):
    """Token-level PRM loss at step tags (see the module docstring for the formula)."""

    name = "prm"
    # What batches this objective consumes: the train verb builds PRM data for it.
    batch_kind = "prm"

    def __init__(self, good_token: str = "+", bad_token: str = "-", label_mode: str = "hard",
                 hard_threshold: float = 0.5, full_logits: bool = False,
                 good_token_id: int | None = None, bad_token_id: int | None = None,
                 readout: str = "tag", head: str = "prm_token", value_loss: str = "mse"):
        if head not in HEADS:
            raise ObjectiveOptionError(f"objective.head={head!r}: head must be one of {', '.join(HEADS)}")
        if value_loss not in VALUE_LOSSES:
            raise ObjectiveOptionError(f"objective.value_loss={value_loss!r}: must be one of "
                                       f"{', '.join(VALUE_LOSSES)}")
        if head != "prm_token" and readout != "tag":
            raise ObjectiveOptionError(f"objective.readout={readout!r}: needs objective.head=prm_token "
                                       f"(a {head} reads the tag); set objective.readout=tag")
        self.head, self.value_loss = head, value_loss
        if readout not in READOUTS:
            raise ValueError(f"prm: readout must be one of {READOUTS}, got {readout!r}")
        self.readout = readout
        if label_mode not in LABEL_MODES:
            raise ValueError(f"prm: label_mode must be one of {LABEL_MODES}, got {label_mode!r}")
        if not 0.0 < hard_threshold <= 1.0:
            raise ValueError(f"prm: hard_threshold must be in (0, 1], got {hard_threshold}")
        if good_token == bad_token:
            raise ValueError("prm: good_token and bad_token must differ")
        self.good_token, self.bad_token = good_token, bad_token
        self.label_mode, self.hard_threshold = label_mode, float(hard_threshold)
        self.full_logits = bool(full_logits)
        self.good_token_id, self.bad_token_id = good_token_id, bad_token_id
        if (good_token_id is None) != (bad_token_id is None):
            raise ValueError("prm: give both good_token_id and bad_token_id, or neither")
        if good_token_id is not None and good_token_id == bad_token_id:
            raise ValueError("prm: good_token_id and bad_token_id must differ")

    # -- tokens ---------------------------------------------------------------------------
    def resolve_tokens(self, tokenizer) -> tuple[int, int]:
        """Set (and return) the good/bad token ids from the tokenizer; each must be one token
        (a head model reads no token rows: returns None)."""
        from ..tokenization import single_token_id

        if self.head != "prm_token":
            return None
        self.good_token_id = single_token_id(tokenizer, self.good_token)
        self.bad_token_id = single_token_id(tokenizer, self.bad_token)
        if self.good_token_id == self.bad_token_id:
            raise ValueError("prm: good and bad tokens map to the same id")
        return self.good_token_id, self.bad_token_id

    @property
    def token_ids(self) -> list[int]:
        if self.good_token_id is None:
            raise RuntimeError("prm: token ids unknown; call resolve_tokens(tokenizer) first "
                               "(train_prm does) or pass good_token_id / bad_token_id")
        return [self.good_token_id, self.bad_token_id]

    # -- loss -----------------------------------------------------------------------------
    def tag_logits(self, model, batch) -> torch.Tensor:
        """``[|S|, 2]`` float32 logits of (good, bad) at the tag positions, in row-major order."""
        return tag_logits(model, batch["input_ids"], batch.get("attention_mask"), batch["tag_mask"],
                          self.token_ids, full_logits=self.full_logits)

    def loss(self, model, batch):
        y = batch["step_labels"][batch["tag_mask"]].float()
        if self.head != "prm_token":
            z = head_logits(model, batch["input_ids"], batch.get("attention_mask"), batch["tag_mask"])
            if self.head == "prm_head":
                return prm_loss(z[:, [1, 0]], y, self.label_mode, self.hard_threshold)
            return value_loss(z[:, 0], y, self.value_loss, self.label_mode, self.hard_threshold)
        if self.readout == "likelihood":
            x = step_min_logprob(model, batch["input_ids"], batch.get("attention_mask"),
                                 batch["step_of_token"], int(batch["tag_mask"].sum()))
            keep = up_to_first_bad(batch["tag_mask"], batch["step_labels"], self.hard_threshold)
            z = torch.stack([x, log1mexp(x)], dim=-1)[keep]
            y = y[keep]
        else:
            z = self.tag_logits(model, batch)
        return prm_loss(z, y, self.label_mode, self.hard_threshold)

    def loss_weight(self, batch) -> float:
        return float(max(1, int(batch["tag_mask"].sum())))

    def state_dict(self) -> dict:
        return {"good_token_id": self.good_token_id, "bad_token_id": self.bad_token_id}

    @torch.no_grad()
    def tag_scores(self, model, batch) -> torch.Tensor:
        """``[|S|]`` P(good) at the tags, row-major: what the reward of the same kind reads."""
        if self.head == "prm_head":
            z = head_logits(model, batch["input_ids"], batch["attention_mask"], batch["tag_mask"])
            return torch.softmax(z, dim=-1)[:, 1]
        if self.head == "value_head":
            z = head_logits(model, batch["input_ids"], batch["attention_mask"], batch["tag_mask"])
            return torch.sigmoid(z[:, 0])
        if self.readout == "likelihood":
            return step_min_logprob(model, batch["input_ids"], batch["attention_mask"],
                                    batch["step_of_token"], batch["num_tags"]).exp()
        return torch.softmax(self.tag_logits(model, batch), dim=-1)[:, 0]


def head_logits(model, input_ids, attention_mask, tag_mask) -> torch.Tensor:
    """``[P, C]`` float32: a token-classification model's head (its ``score`` Linear, after any
    pre-layers) on the decoder's last hidden states at the ``tag_mask`` positions — only P rows
    go through the head, and no dropout, exactly what the ``prm_head`` / ``value_head`` rewards
    compute at search time."""
    from ..rewards.classifier_heads import find_head

    kw = {"input_ids": input_ids, "use_cache": False}
    if attention_mask is not None:
        kw["attention_mask"] = attention_mask
    pre, lin = find_head(model)
    hidden = model.base_model(**kw).last_hidden_state  # [B, T, d], after the final norm
    sel = hidden[tag_mask]
    if pre is not None:
        sel = pre(sel)
    z = lin(sel).float()
    if z.shape[0] == 0:
        z = z + 0.0 * hidden.sum()  # keep the graph connected: a zero gradient, not None
    return z


def value_loss(x: torch.Tensor, labels: torch.Tensor, kind: str = "mse", label_mode: str = "hard",
               hard_threshold: float = 0.5):
    """``(loss, metrics)`` of a value head from ``[P]`` logits ``x`` (``v = sigmoid(x)``) and
    ``[P]`` targets in [0, 1]: mean ``(v - y)^2`` (``"mse"``) or BCE (``"bce"``)."""
    n = int(x.shape[0])
    if n == 0:
        return x.sum() * 0.0, {"loss": 0.0, "step_acc": 0.0, "p_good": 0.0, "good_frac": 0.0, "tags": 0.0}
    x = x.float()
    hard = (labels >= hard_threshold).float()
    y = hard if label_mode == "hard" else labels.float()
    v = torch.sigmoid(x)
    if kind == "mse":
        loss = ((v - y) ** 2).mean()
    else:
        loss = F.binary_cross_entropy_with_logits(x, y)
    with torch.no_grad():
        acc = ((v >= 0.5).float() == hard).float().mean().item()
    return loss, {"loss": float(loss.detach()), "step_acc": acc, "p_good": float(v.detach().mean()),
                  "good_frac": float(hard.mean()), "tags": float(n)}


def tag_logits(model, input_ids, attention_mask, tag_mask, token_ids, *,
               full_logits: bool = False) -> torch.Tensor:
    """Logits of ``token_ids`` rows of the output head at ``tag_mask`` positions, ``[P, C]``."""
    kw = {"input_ids": input_ids, "use_cache": False}
    if attention_mask is not None:
        kw["attention_mask"] = attention_mask
    rows = torch.as_tensor(token_ids, dtype=torch.long, device=input_ids.device)
    decoder = getattr(model, "get_decoder", lambda: None)() if not full_logits else None
    head = model.get_output_embeddings() if decoder is not None else None
    if decoder is None or not isinstance(head, torch.nn.Linear):
        logits = model(**kw).logits
        return logits[tag_mask][:, rows].float()
    hidden = decoder(**kw).last_hidden_state  # [B, T, d], after the final norm
    sel = hidden[tag_mask].float()  # [P, d]
    w = head.weight.index_select(0, rows).float()
    z = sel @ w.T
    if head.bias is not None:
        z = z + head.bias.index_select(0, rows).float()
    if z.shape[0] == 0:
        # keep the graph connected to the parameters: a zero gradient, not None
        z = z + 0.0 * hidden.sum()
    return z


def up_to_first_bad(tag_mask: torch.Tensor, step_labels: torch.Tensor, threshold: float) -> torch.Tensor:
    """``[|S|]`` bool over the tags (row-major): True for the tags of a row up to and including
    its first tag labelled below ``threshold``."""
    bad = tag_mask & (step_labels < threshold)
    seen = bad.long().cumsum(dim=1)
    keep = tag_mask & ((seen == 0) | (bad & (seen == 1)))
    return keep[tag_mask]


def step_min_logprob(model, input_ids, attention_mask, step_of_token, num_steps: int) -> torch.Tensor:
    """``[num_steps]`` float32: per step, ``min log p(x_t | x_<t)`` over the tokens ``t`` with
    ``step_of_token[b, t] == k`` (the likelihood read-out; 0 for a step with no such token)."""
    kw = {"input_ids": input_ids, "use_cache": False}
    if attention_mask is not None:
        kw["attention_mask"] = attention_mask
    logits = model(**kw).logits[:, :-1].float()  # position t-1 predicts token t
    lp = torch.log_softmax(logits, -1).gather(-1, input_ids[:, 1:, None])[..., 0]  # [B, T-1]
    own = step_of_token[:, 1:].to(lp.device)
    m = own >= 0
    out = torch.zeros(num_steps, dtype=lp.dtype, device=lp.device)
    out = out.scatter_reduce(0, own[m], lp[m], reduce="amin", include_self=False)
    if num_steps and not bool(m.any()):
        out = out + 0.0 * lp.sum()  # keep the graph connected: a zero gradient, not None
    return out


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x <= 0``, stable (x is clamped to at most -1e-6)."""
    x = x.clamp(max=-1e-6)
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def prm_loss(z: torch.Tensor, labels: torch.Tensor, label_mode: str = "hard",
             hard_threshold: float = 0.5):
    """``(loss, metrics)`` from ``[P, 2]`` (good, bad) logits and ``[P]`` labels in [0, 1]."""
    n = int(z.shape[0])
    if n == 0:
        loss = z.sum() * 0.0
        return loss, {"loss": 0.0, "step_acc": 0.0, "p_good": 0.0, "good_frac": 0.0, "tags": 0.0}
    logp = F.log_softmax(z.float(), dim=-1)
    hard = (labels >= hard_threshold).float()
    y = hard if label_mode == "hard" else labels.float()
    per = -(y * logp[:, 0] + (1.0 - y) * logp[:, 1])
    loss = per.mean()
    with torch.no_grad():
        p = logp[:, 0].exp()
        acc = ((p >= 0.5).float() == hard).float().mean().item()
    return loss, {"loss": float(loss.detach()), "step_acc": acc, "p_good": float(p.mean()),
                  "good_frac": float(hard.mean()), "tags": float(n)}


def make_prm_objective(**kwargs) -> PRMObjective:
    """Registry factory for ``objective=prm`` (keyword arguments: see :class:`PRMObjective`)."""
    kwargs.pop("name", None)
    return PRMObjective(**kwargs)
