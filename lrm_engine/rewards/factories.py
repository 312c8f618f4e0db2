"""Registry factories behind ``reward=prm_token | prm_head | value_head``.

Each takes its config node's fields. ``path=None`` means the embedded default PRM trained by
``lrm run`` (see :mod:`lrm_engine.default_models`): the factory then returns a
:class:`~lrm_engine.default_models.LazyHandle` that resolves the path and loads the model at
the first ``score`` call (so composing and building the config needs no model). With a path,
the model is loaded at once (errors surface at build time).
"""

from __future__ import annotations

from lrm_engine.default_models import LazyHandle, resolve_model_path


class LazyReward(LazyHandle):
    """A reward model that loads on first use (``score`` / ``release`` forward to it)."""

    def score(self, tree, pairs, policy):
        return self.resolve().score(tree, pairs, policy)

    def release(self, tree) -> None:
        if self.loaded:
            self.resolve().release(tree)


def _lazy_or_now(path, build, what: str):
    if path is None:
        return LazyReward(lambda: build(resolve_model_path(None, "prm", "reward.path")), what)
    return build(str(path))


def make_prm_token(path: str | None = None, gguf_file: str | None = None, dtype: str = "float32",
                   kv_budget_mb: float = 256.0, good_token: str | None = None,
                   bad_token: str | None = None, step_tag: str | None = None,
                   trust_remote_code: bool = False, device: str = "cpu", backend: str = "auto",
                   readout: str | None = None):
    """``prm_token``: token-logit PRM over a local causal LM (tag or likelihood read-out)."""

    def build(p: str):
        from lrm_engine.models.loading import load_causal_lm
        from lrm_engine.rewards.prm_token import TokenPRM, check_kind, prm_token_defaults

        d = prm_token_defaults(p)
        check_kind(p, "prm_token", "prm_token")
        model, tok = load_causal_lm(p, gguf_file=gguf_file, dtype=dtype,
                                    trust_remote_code=trust_remote_code, device=device)
        return TokenPRM(model, tok, good_token=good_token or d["good_token"],
                        bad_token=bad_token or d["bad_token"],
                        step_tag=step_tag if step_tag is not None else d["step_tag"],
                        readout=readout or d["readout"], kv_budget_mb=kv_budget_mb, backend=backend)

    return _lazy_or_now(path, build, "prm_token reward")


def make_prm_head(path: str | None = None, dtype: str = "float32", kv_budget_mb: float = 256.0,
                  positive_class: int = 1, step_tag: str | None = None,
                  trust_remote_code: bool = False, device: str = "cpu", backend: str = "auto"):
    """``prm_head``: two-class head PRM over a local token-classification model."""

    def build(p: str):
        from lrm_engine.rewards.classifier_heads import TwoClassPRM
        from lrm_engine.rewards.loading import load_token_classifier
        from lrm_engine.rewards.prm_token import check_kind

        d = check_kind(p, "prm_head", "prm_head")
        model, tok = load_token_classifier(p, dtype=dtype, trust_remote_code=trust_remote_code, device=device)
        return TwoClassPRM(model, tok, positive_class=positive_class,
                           step_tag=step_tag if step_tag is not None else d.get("step_tag"),
                           kv_budget_mb=kv_budget_mb, backend=backend)

    return _lazy_or_now(path, build, "prm_head reward")


def make_value_head(path: str | None = None, dtype: str = "float32", kv_budget_mb: float = 256.0,
                    step_tag: str | None = None, trust_remote_code: bool = False,
                    device: str = "cpu", backend: str = "auto"):
    """``value_head``: sigmoid of a one-output linear head over a token-classification model."""

    def build(p: str):
        from lrm_engine.rewards.classifier_heads import ValueHeadPRM
        from lrm_engine.rewards.loading import load_token_classifier
        from lrm_engine.rewards.prm_token import check_kind

        d = check_kind(p, "value_head", "value_head")
        model, tok = load_token_classifier(p, dtype=dtype, trust_remote_code=trust_remote_code, device=device)
        return ValueHeadPRM(model, tok, step_tag=step_tag if step_tag is not None else d.get("step_tag"),
                            kv_budget_mb=kv_budget_mb, backend=backend)

    return _lazy_or_now(path, build, "value_head reward")
