"""rStar's five actions and their default prompt suffixes (no heavy imports: the config schema
in ``lrm_builtin.search`` reads them at start-up)."""

# A1 one next step; A2 all remaining steps; A3 a sub-question and its answer; A4 re-answer the
# sub-question; A5 rephrase the question.
ACTIONS = ("A1", "A2", "A3", "A4", "A5")

# Default prompt suffixes, worded for a step-per-line solution (the embedded arith models know
# none of these words: with them rStar runs, it does not help; A1 and A2 add no words).
DEFAULT_TEMPLATES = {
    "A1": "",
    "A2": "",
    "A3": "Sub-question: ",
    "A4": "Answer again: ",
    "A5": "Rephrased question: ",
}
