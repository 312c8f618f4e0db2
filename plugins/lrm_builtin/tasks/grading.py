"""Answer extraction and math-equivalence grading, safe on and off the main thread.

math-verify's ``parse``/``verify`` time out with ``signal.alarm``, which only works on the main
thread (off it they raise). :func:`math_equal` therefore

- on the main thread: calls math-verify in-process with its own timeouts (``timeout`` s);
- off the main thread: sends the comparison to a small pool of worker processes (spawned once,
  lazily; each worker runs math-verify on its own main thread, so math-verify's alarms work
  there too) and waits at most ``timeout`` seconds plus a margin; a comparison that overruns
  counts as *not equal*, the stuck workers are killed and the pool is rebuilt.

Before math-verify, a fast exact path handles the common case: when both answers read as plain
numbers (``1,000``, ``$18``, ``7.50``, ``-3``, ``25%``, ``3/4``) they are compared exactly as
fractions, with no sympy and no timeout needed.

Grading never raises on model output. Special-token text that a decoder left in a solution
(``18<|im_end|>``, ``18</s>``, ``<eos>``, ``<|eot_id|>``) is dropped before the answer is read
(:func:`strip_special_tokens`). An answer longer than :data:`MAX_ANSWER_CHARS` (say a number of
5,000 digits, past Python's 4,300-digit limit on ``int(str)``) is graded wrong without being
parsed; a comparison that fails or times out is graded wrong. Each such case is counted in
:data:`GRADING_ISSUES` and logged with the text cut to :data:`LOG_CHARS` characters.
"""

from __future__ import annotations

import atexit
import collections
import logging
import multiprocessing as mp
import re
import threading
from fractions import Fraction

log = logging.getLogger("lrm_engine.tasks")

# Default seconds allowed for one parse + verify.
DEFAULT_TIMEOUT = 5.0
# Longest final answer that is parsed at all; longer ones are graded wrong (counted).
MAX_ANSWER_CHARS = 1000
# Most characters of a model's text a grading warning shows.
LOG_CHARS = 200
# Answers graded wrong without a comparison, by cause: "too_long", "failed", "timed_out".
# (A process-wide tally; read it with grading_issues().)
GRADING_ISSUES: collections.Counter = collections.Counter()


def grading_issues() -> dict[str, int]:
    """How many answers were graded wrong because they could not be compared, by cause."""
    return dict(GRADING_ISSUES)


def cut(text: object, n: int = LOG_CHARS) -> str:
    """``repr(text)`` cut to ``n`` characters (with the full length) for a log line."""
    r = repr(text)
    return r if len(r) <= n else f"{r[:n]}... ({len(str(text))} chars)"


# ------------------------------------------------------------------------- special tokens

# Text of end-of-turn / end-of-sequence tokens: a solution ends at the first one.
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<|end_of_text|>", "<|end|>",
               "<end_of_turn>", "</s>", "<eos>", "<\uff5cend\u2581of\u2581sentence\uff5c>")
# Any other special-token text (<|...|>, <s>, <pad>, <unk>, <bos>, <mask>, <start_of_turn>): removed.
_SPECIAL = re.compile(r"<\|[^<>|\s]{1,40}\|>|<\uff5c[^<>\s]{1,40}\uff5c>|</?s>|"
                      r"<(?:pad|unk|bos|eos|mask|start_of_turn|end_of_turn)>")
_END = re.compile("|".join(re.escape(t) for t in END_OF_TURN))


def strip_special_tokens(text: str) -> str:
    """``text`` up to its first end-of-turn token, with any other special-token text removed."""
    m = _END.search(text)
    if m is not None:
        text = text[: m.start()]
    return _SPECIAL.sub("", text)


def parse_int(text: str) -> int | None:
    """``int(text)`` for an optionally signed run of at most MAX_ANSWER_CHARS digits, else None
    (never Python's ValueError on over-long digit strings)."""
    t = text.strip()
    if len(t) > MAX_ANSWER_CHARS or not re.fullmatch(r"-?\d+", t):
        return None
    return int(t)

# ------------------------------------------------------------------------- extraction

_BOX_CMDS = ("\\boxed", "\\fbox")


def extract_boxed(text: str) -> str | None:
    r"""The content of the last ``\boxed{...}`` (or ``\fbox{...}``), nested braces respected.

    Also accepts the brace-less form ``\boxed 5``. Returns None when there is none or the
    braces never close.
    """
    best = None
    for cmd in _BOX_CMDS:
        i = text.rfind(cmd)
        if i >= 0 and (best is None or i > best[0]):
            best = (i, cmd)
    if best is None:
        return None
    i = best[0] + len(best[1])
    # \boxed 5  (brace-less form: up to the next whitespace/$)
    if i < len(text) and text[i] == " ":
        m = re.match(r"\s*([^\s$]+)", text[i:])
        return m.group(1) if m else None
    if i >= len(text) or text[i] != "{":
        return None
    depth = 0
    for j in range(i, len(text)):
        c = text[j]
        if c == "{" and text[j - 1] != "\\":
            depth += 1
        elif c == "}" and text[j - 1] != "\\":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None


_NUM_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def last_number(text: str) -> str | None:
    """The last number written in ``text`` (commas allowed), or None."""
    found = _NUM_RE.findall(text)
    return found[-1] if found else None


_STRIP_WRAPPERS = re.compile(r"^\\text\{(.*)\}$|^\\mathrm\{(.*)\}$")


def as_number(s: str) -> Fraction | None:
    """Read ``s`` as an exact number if it is plainly one, else None.

    Accepts thousands separators, a leading ``$``, a trailing ``%`` or ``.``, ``\\$``,
    surrounding ``$...$`` math delimiters, simple fractions ``a/b`` and ``\\frac{a}{b}``.
    Text longer than MAX_ANSWER_CHARS is not read (None).
    """
    if len(s) > MAX_ANSWER_CHARS:
        return None
    t = s.strip()
    t = t.strip("$").strip()
    t = t.replace("\\$", "").replace("\\!", "").replace("\\,", "").replace("{,}", ",")
    t = t.replace("\\%", "").rstrip("%").strip()
    m = _STRIP_WRAPPERS.match(t)
    if m:
        t = next(g for g in m.groups() if g is not None).strip()
    t = t.rstrip(".").strip()
    m = re.fullmatch(r"\\[dt]?frac\{(-?\d+)\}\{(-?\d+)\}", t)
    if m:
        num, den = int(m.group(1)), int(m.group(2))
        return Fraction(num, den) if den else None
    m = re.fullmatch(r"(-?\d+)\s*/\s*(-?\d+)", t)
    if m:
        num, den = int(m.group(1)), int(m.group(2))
        return Fraction(num, den) if den else None
    if re.fullmatch(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+", t):
        return Fraction(t.replace(",", ""))
    return None


# ------------------------------------------------------------------------- math-verify


def _wrap(ans: str) -> str:
    return "\\boxed{" + ans + "}"


def _mv_equal(pred: str, ref: str, timeout: float | None) -> bool:
    """math-verify equivalence of two answer strings; timeout None disables its alarms."""
    from math_verify import parse, verify

    t = None if timeout is None else max(1, int(round(timeout)))
    gold = parse(_wrap(ref), parsing_timeout=t)
    target = parse(_wrap(pred), parsing_timeout=t)
    if not gold or not target:
        return False
    return bool(verify(gold, target, timeout_seconds=t))


class _Pool:
    """A lazily spawned process pool for off-main-thread grading, rebuilt after a timeout."""

    def __init__(self, processes: int = 2):
        self.processes = processes
        self._pool = None
        self._lock = threading.Lock()
        self._atexit = False

    def _get(self):
        with self._lock:
            if self._pool is None:
                ctx = mp.get_context("spawn")
                self._pool = ctx.Pool(self.processes)
                if not self._atexit:
                    # Stop the workers before interpreter teardown (else Pool.__del__ complains).
                    atexit.register(self.reset)
                    self._atexit = True
                # Warm up: importing sympy/math-verify in the workers takes a few seconds; do it
                # once, outside any grading timeout.
                self._pool.map(_warmup, range(self.processes))
            return self._pool

    def run(self, func, args: tuple, guard: float, default=False):
        """``func(*args)`` in a worker process; ``default`` if it overruns ``guard`` seconds
        (the workers are then killed and the pool rebuilt on next use)."""
        pool = self._get()
        res = pool.apply_async(func, args)
        try:
            return res.get(timeout=guard)
        except mp.TimeoutError:
            GRADING_ISSUES["timed_out"] += 1
            log.warning("grading timed out after %.1fs (counted as wrong): %s%s", guard,
                        getattr(func, "__name__", func), cut(args))
            self.reset()
            return default
        except Exception as e:  # the comparison raised in the worker
            GRADING_ISSUES["failed"] += 1
            log.warning("grading failed (counted as wrong): %s: %s", cut(args), cut(e))
            return default

    def call(self, pred: str, ref: str, timeout: float) -> bool:
        # math-verify's own alarm fires inside the worker after `timeout` s for parse and again
        # for verify; the outer guard catches anything that escapes them.
        return bool(self.run(_mv_equal, (pred, ref, timeout), guard=3 * timeout + 1.0))

    def map_equal(self, pairs, timeout: float) -> list[bool]:
        pool = self._get()
        asyncs = [pool.apply_async(_mv_equal, (p, r, timeout)) for p, r in pairs]
        out = []
        for (p, r), a in zip(pairs, asyncs):
            try:
                out.append(bool(a.get(timeout=3 * timeout + 1.0)))
            except mp.TimeoutError:
                GRADING_ISSUES["timed_out"] += 1
                log.warning("grading timed out (counted as wrong): %s vs %s", cut(p), cut(r))
                out.append(False)
            except Exception as e:  # the comparison raised in the worker
                GRADING_ISSUES["failed"] += 1
                log.warning("grading failed (counted as wrong): %s vs %s: %s", cut(p), cut(r), cut(e))
                out.append(False)
        return out

    def reset(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.terminate()
                self._pool = None


def _warmup(_: int) -> int:
    import math_verify  # noqa: F401

    return 0


_POOL = _Pool()


def shutdown_pool() -> None:
    """Stop the grading worker processes (they restart on the next off-thread grade)."""
    _POOL.reset()


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _unparsable(pred: str) -> bool:
    """An answer too long to parse: graded wrong, counted and logged (cut)."""
    if len(pred) <= MAX_ANSWER_CHARS:
        return False
    GRADING_ISSUES["too_long"] += 1
    log.warning("answer of %d characters graded wrong without parsing (limit %d): %s",
                len(pred), MAX_ANSWER_CHARS, cut(pred))
    return True


def math_equal(pred: str | None, ref: str, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Whether answer ``pred`` equals reference ``ref`` (exact numbers, else math-verify).

    Never raises: an answer that cannot be compared is not equal (see the module docstring).
    """
    if pred is None:
        return False
    pred, ref = pred.strip(), ref.strip()
    if not pred or _unparsable(pred):
        return False
    try:
        a, b = as_number(pred), as_number(ref)
        if a is not None and b is not None:
            return a == b
        if " ".join(pred.split()) == " ".join(ref.split()):
            return True
        if _on_main_thread():
            return _mv_equal(pred, ref, timeout)
        return _POOL.call(pred, ref, timeout)
    except Exception as e:  # math-verify's TimeoutException, sympy errors, anything else
        GRADING_ISSUES["failed"] += 1
        log.warning("grading failed (counted as wrong): %s vs %s: %s", cut(pred), cut(ref), cut(e))
        return False


def math_equal_many(pairs, timeout: float = DEFAULT_TIMEOUT, processes: int | None = None) -> list[bool]:
    """:func:`math_equal` over many ``(pred, ref)`` pairs, math-verify work in parallel processes."""
    pairs = [(p, r) for p, r in pairs]
    out: list[bool | None] = [None] * len(pairs)
    todo = []
    for i, (p, r) in enumerate(pairs):
        if p is None or not p.strip() or _unparsable(p.strip()):
            out[i] = False
            continue
        a, b = as_number(p), as_number(r)
        if a is not None and b is not None:
            out[i] = a == b
        elif " ".join(p.split()) == " ".join(r.split()):
            out[i] = True
        else:
            todo.append(i)
    if todo:
        if processes is not None and processes != _POOL.processes:
            _POOL.reset()
            _POOL.processes = processes
        res = _POOL.map_equal([(pairs[i][0].strip(), pairs[i][1].strip()) for i in todo], timeout)
        for i, r in zip(todo, res):
            out[i] = r
    return [bool(x) for x in out]
