"""`journey` with generated reflections (annotate.reflector): the line a (scripted) model writes is
the line in the records; its prompt holds the trajectory, never the reference; an empty generation
falls back to the template; the default (no reflector) keeps the template."""

from __future__ import annotations

import pytest
import torch

from lrm_builtin.annotators.journey import JourneyAnnotator
from prompt_policy import PromptPolicy
from scripted_annotate import examples, grade, make_ctx
from lrm_engine.train.sft_data import load_sft_jsonl

# The scripted world's journey (tests/test_annotators.py): prefix s1c0 s2c0, wrong step s3c2 (both
# rollouts from it end "no"), backtrack to s3c0 -> "yes".
ASK = ("q0\ns1c0\ns2c0\ns3c2\n"
       "Step 3 above leads nowhere: none of the 2 ways tried from it reaches a correct answer. "
       "In one line, say why and what to do instead.\n")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _run(ann, tmp_path, ctx=None):
    out = ann.open_output(tmp_path)
    ann.annotate(ctx or make_ctx(), examples(1), grade, out, batch_size=2, progress=False)
    return out


def test_a_scripted_reflector_writes_the_reflection_line(tmp_path):
    refl = PromptPolicy(lambda p: ["s3c2 was a bad guess, the third step must be redone"])
    ann = JourneyAnnotator(num_candidates=3, num_rollouts=2, reflector=refl)
    (r,) = _run(ann, tmp_path).records()
    assert r["completion"] == ("s1c0\ns2c0\ns3c2\n"
                               "s3c2 was a bad guess, the third step must be redone\n"
                               "s3c0\ns4c0 Answer: yes\n")
    assert r["reflection_source"] == "model" and ann.stats["reflections_generated"] == 1
    assert refl.prompts == [ASK]
    assert "yes" not in refl.prompts[0]  # the reference answer is not in the reflector's prompt
    assert load_sft_jsonl(out_path(tmp_path)).skipped == 0


def out_path(tmp_path):
    return tmp_path / "journey.jsonl"


def test_an_empty_generation_falls_back_to_the_template(tmp_path):
    ann = JourneyAnnotator(num_candidates=3, num_rollouts=2, reflector=PromptPolicy(lambda p: ["   "]))
    (r,) = _run(ann, tmp_path).records()
    assert "Wait, step 3 is wrong because none of the 2 ways" in r["completion"]
    assert r["reflection_source"] == "template" and ann.stats["reflections_fallback"] == 1


def test_reflector_policy_uses_the_annotating_policy_and_default_keeps_the_template(tmp_path):
    # The scripted annotating policy continues the prompt's steps: after s3c2 it writes s4c0.
    ann = JourneyAnnotator(num_candidates=3, num_rollouts=2, reflector="policy")
    (r,) = _run(ann, tmp_path / "p").records()
    assert r["completion"] == "s1c0\ns2c0\ns3c2\ns4c0 Answer: no\ns3c0\ns4c0 Answer: yes\n"
    assert r["reflection_source"] == "model" and grade(examples(1)[0], r["completion"])
    (d,) = _run(JourneyAnnotator(num_candidates=3, num_rollouts=2), tmp_path / "d").records()
    assert d["reflection_source"] == "template" and "Wait, step 3 is wrong" in d["completion"]
    with pytest.raises(ValueError, match="annotate.reflector_prompt"):
        JourneyAnnotator(reflector="policy", reflector_prompt="{nope}")
