"""``export.tree=html``: one self-contained HTML file showing every searched tree.

No network at all: CSS and JS are inline and a Content-Security-Policy forbids any fetch. The
nodes are rendered on the Python side as nested lists (readable without JS); the small script
adds the interaction:

* a problem selector when the file holds several trees (one tree shown at a time);
* click (or Enter / Space on) a node to fold / unfold its subtree; "expand all", "collapse
  all" and "chosen path only" buttons;
* each node shows its slot id, step text, PRM step score (coloured red -> green), aggregated
  path score, visits and value; terminal answers are tagged; the chosen path is highlighted.

All text (step text, questions, answers, ids) is HTML-escaped, so a step that contains
``<script>`` shows as text and never runs.

Opening ``trees.html#selftest`` runs a self-check (counts the rendered nodes, clicks the first
node and checks its children fold, switches problems) and writes the outcome as JSON into the
``data-selftest`` attribute of ``<body>`` — for headless-browser tests (``--dump-dom``).
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

_CSS = """
:root { --chosen: #1a7f37; --chosen-bg: #e3f4e8; --line: #c8ccd2; --muted: #5b636e; }
* { box-sizing: border-box; }
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1f2328; }
header { position: sticky; top: 0; background: #f6f8fa; border-bottom: 1px solid var(--line);
         padding: .6em 1em; z-index: 1; display: flex; flex-wrap: wrap; gap: .6em 1em; align-items: center; }
header h1 { font-size: 1.05em; margin: 0; }
header .legend { color: var(--muted); font-size: .85em; }
main { padding: .5em 1em 3em; }
section.tree .meta { margin: .4em 0 .8em; padding: .5em .7em; background: #f6f8fa; border-radius: 6px; }
section.tree .meta div { margin: .1em 0; }
section.tree .meta .k { color: var(--muted); display: inline-block; min-width: 6.5em; }
.q { white-space: pre-wrap; }
ul.kids, ul.top { list-style: none; margin: 0; padding: 0; }
ul.kids { margin-left: .9em; padding-left: .8em; border-left: 1px dotted var(--line); }
li.node { margin: .12em 0; }
.label { display: inline-flex; flex-wrap: wrap; align-items: baseline; gap: .35em; cursor: pointer;
         padding: .1em .4em; border-radius: 4px; border-left: 3px solid transparent; max-width: 100%; }
.label:hover { background: #eef1f4; }
.label:focus { outline: 2px solid #0969da; outline-offset: 1px; }
li.leaf > .label { cursor: default; }
li.chosen > .label { background: var(--chosen-bg); border-left-color: var(--chosen); font-weight: 600; }
.tog { width: 1em; color: var(--muted); font-family: monospace; }
li.leaf > .label .tog { visibility: hidden; }
li.folded > .label .tog::before { content: "\\25B8"; }
li:not(.folded) > .label .tog::before { content: "\\25BE"; }
li.folded > ul.kids { display: none; }
.more { display: none; color: var(--muted); font-size: .85em; font-weight: normal; }
li.folded > .label .more { display: inline; }
.sid { color: var(--muted); font-family: monospace; font-size: .85em; }
.step { white-space: pre-wrap; font-family: ui-monospace, "SFMono-Regular", Menlo, monospace; }
.root-step { color: var(--muted); font-style: italic; }
.b { font-size: .78em; font-weight: normal; padding: 0 .35em; border-radius: 3px; background: #eaeef2;
     white-space: nowrap; font-family: monospace; }
.b.prm { color: #111; }
.b.term { background: #ddf4ff; }
.b.cand { background: #fff8c5; }
.b.ans { background: #dafbe1; }
body.only-chosen li.node:not(.chosen) { display: none; }
"""

_JS = r"""
(function () {
  "use strict";
  var trees = Array.prototype.slice.call(document.querySelectorAll("section.tree"));
  var sel = document.getElementById("problem");
  var current = 0;
  function show(i) {
    current = i;
    trees.forEach(function (t, j) { t.hidden = (j !== i); });
    if (sel && sel.value !== String(i)) { sel.value = String(i); }
  }
  function kids(li) { return li.querySelector(":scope > ul.kids"); }
  function fold(li, f) {
    if (!kids(li)) { return; }
    if (f === undefined) { f = !li.classList.contains("folded"); }
    li.classList.toggle("folded", f);
    var lab = li.querySelector(":scope > .label");
    if (lab) { lab.setAttribute("aria-expanded", f ? "false" : "true"); }
  }
  if (sel) { sel.addEventListener("change", function () { show(parseInt(sel.value, 10) || 0); }); }
  document.addEventListener("click", function (e) {
    var lab = e.target.closest ? e.target.closest(".label") : null;
    if (lab && lab.parentElement.classList.contains("node")) { fold(lab.parentElement); }
  });
  document.addEventListener("keydown", function (e) {
    var lab = e.target;
    if (lab.classList && lab.classList.contains("label") && (e.key === "Enter" || e.key === " ")) {
      e.preventDefault(); fold(lab.parentElement);
    }
  });
  function each(f) {
    var t = trees[current];
    if (t) { Array.prototype.forEach.call(t.querySelectorAll("li.node"), f); }
  }
  function btn(id, f) { var b = document.getElementById(id); if (b) { b.addEventListener("click", f); } }
  btn("expand-all", function () { each(function (li) { fold(li, false); }); });
  btn("collapse-all", function () {
    each(function (li) { fold(li, li.getAttribute("data-depth") !== "0"); });
  });
  btn("only-chosen", function () {
    var on = document.body.classList.toggle("only-chosen");
    this.setAttribute("aria-pressed", on ? "true" : "false");
  });
  show(0);

  if (location.hash === "#selftest") {
    var res = { ok: false };
    try {
      var vis = function (el) { return el.getClientRects().length > 0; };
      var count = function (root, q) {
        return Array.prototype.filter.call(root.querySelectorAll(q), vis).length;
      };
      res.trees = trees.length;
      res.nodes = document.querySelectorAll("li.node").length;
      res.per_tree = trees.map(function (t) { return t.querySelectorAll("li.node").length; });
      res.declared = trees.map(function (t) { return parseInt(t.getAttribute("data-nodes"), 10); });
      var t0 = trees[0];
      res.visible_before = count(t0, "li.node");
      res.chosen_visible = count(t0, "li.node.chosen");
      var first = t0.querySelector("li.node");
      var lab = first.querySelector(":scope > .label");
      lab.click();
      res.first_folded = first.classList.contains("folded");
      res.children_hidden = kids(first) ? !vis(kids(first)) : null;
      res.visible_after = count(t0, "li.node");
      lab.click();
      res.visible_restored = count(t0, "li.node");
      if (trees.length > 1 && sel) {
        sel.value = "1";
        sel.dispatchEvent(new Event("change"));
        res.selector = !vis(trees[0]) && vis(trees[1]);
        res.visible_tree1 = count(trees[1], "li.node");
        sel.value = "0";
        sel.dispatchEvent(new Event("change"));
      }
      res.ok = true;
    } catch (err) {
      res.error = String(err);
    }
    document.body.setAttribute("data-selftest", JSON.stringify(res));
  }
})();
"""


def _e(x: Any) -> str:
    """HTML-escape anything for text and attribute values."""
    return html.escape("" if x is None else str(x), quote=True)


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.3f}"
    return str(x)


def _prm_style(score: float) -> str:
    s = min(1.0, max(0.0, float(score)))
    return f"background:hsl({int(round(120 * s))},70%,82%)"


def _label(node: Mapping[str, Any], n_desc: int) -> str:
    parts = ['<span class="tog" aria-hidden="true"></span>', f'<span class="sid">#{_e(node["id"])}</span>']
    if node.get("score") is not None:
        parts.append(f'<span class="b prm" style="{_prm_style(node["score"])}" title="PRM step score">'
                     f'PRM {_fmt(node["score"])}</span>')
    if node.get("path_score") is not None:
        parts.append(f'<span class="b" title="aggregated path score">path {_fmt(node["path_score"])}</span>')
    parts.append(f'<span class="b" title="visits">N {_e(node.get("visits", 0))}</span>')
    if node.get("value") is not None:
        parts.append(f'<span class="b" title="mean value">V {_fmt(node["value"])}</span>')
    if node.get("prior") is not None:
        parts.append(f'<span class="b" title="prior">P {_fmt(node["prior"])}</span>')
    text = str(node.get("text") or "")
    if node.get("parent") is None:
        parts.append('<span class="step root-step">(root)</span>')
    else:
        parts.append(f'<span class="step">{_e(text.rstrip())}</span>')
    if node.get("terminal"):
        parts.append('<span class="b term">terminal</span>')
    if node.get("candidate"):
        parts.append('<span class="b cand">candidate</span>')
    if node.get("answer") is not None:
        parts.append(f'<span class="b ans">answer {_e(node["answer"])}</span>')
    if n_desc:
        parts.append(f'<span class="more">(+{n_desc} folded)</span>')
    return "".join(parts)


def _tree_nodes_html(tree: Mapping[str, Any]) -> list[str]:
    """Nested <ul>/<li> of the tree's nodes (iterative: deep trees do not hit recursion limits)."""
    nodes = list(tree.get("nodes") or [])
    by_id = {int(n["id"]): n for n in nodes}
    children: dict[int, list[int]] = {i: [] for i in by_id}
    roots = []
    for n in nodes:
        p = n.get("parent")
        if p is None or int(p) not in by_id:
            roots.append(int(n["id"]))
        else:
            children[int(p)].append(int(n["id"]))
    # descendants per node (ids increase from parent to child; order-independent anyway)
    desc = {i: 0 for i in by_id}
    order: list[int] = []
    stack = list(reversed(roots))
    while stack:
        i = stack.pop()
        order.append(i)
        stack.extend(reversed(children[i]))
    for i in reversed(order):
        p = by_id[i].get("parent")
        if p is not None and int(p) in desc:
            desc[int(p)] += 1 + desc[i]
    out = ['<ul class="top">']
    # events: ("open", id) writes <li>..label and, with children, <ul class="kids">; ("close", id)
    events: list[tuple[str, int]] = [("open", r) for r in reversed(roots)]
    while events:
        kind, i = events.pop()
        if kind == "close":
            out.append("</ul></li>" if children[i] else "</li>")
            continue
        n = by_id[i]
        cls = ["node"]
        if n.get("chosen"):
            cls.append("chosen")
        if not children[i]:
            cls.append("leaf")
        if n.get("terminal"):
            cls.append("terminal")
        attrs = (f' class="{" ".join(cls)}" data-id="{_e(i)}" data-depth="{_e(n.get("depth", 0))}"'
                 f' data-visits="{_e(n.get("visits", 0))}"')
        if n.get("score") is not None:
            attrs += f' data-score="{_e(n["score"])}"'
        aria = ' role="button" tabindex="0" aria-expanded="true"' if children[i] else ""
        out.append(f'<li{attrs}><div class="label"{aria}>{_label(n, desc[i])}</div>')
        if children[i]:
            out.append('<ul class="kids">')
        events.append(("close", i))
        events.extend(("open", c) for c in reversed(children[i]))
    out.append("</ul>")
    return out


def _meta_html(tree: Mapping[str, Any]) -> str:
    rows = [("problem", tree.get("id")), ("question", tree.get("question")),
            ("answer", tree.get("answer")), ("score", tree.get("score")),
            ("aggregation", tree.get("aggregation")), ("nodes", tree.get("num_nodes", len(tree.get("nodes") or [])))]
    if tree.get("correct") is not None:
        rows.append(("correct", "yes" if tree["correct"] else "no"))
    if tree.get("reference") is not None:
        rows.append(("reference", tree.get("reference")))
    body = "".join(
        f'<div><span class="k">{_e(k)}</span> <span class="{"q" if k == "question" else "v"}">'
        f"{_e(_fmt(v))}</span></div>"
        for k, v in rows if v is not None
    )
    return f'<div class="meta">{body}</div>'


def _option_label(i: int, tree: Mapping[str, Any]) -> str:
    bits = [str(tree.get("id", i))]
    if tree.get("answer") is not None:
        bits.append(f"answer {tree['answer']}")
    if tree.get("correct") is not None:
        bits.append("correct" if tree["correct"] else "wrong")
    bits.append(f"{len(tree.get('nodes') or [])} nodes")
    return " \u2014 ".join(bits)


def render_html(trees: Iterable[Mapping[str, Any]], title: str = "lrm search trees") -> str:
    """The viewer page for the tree dicts (lrm_engine/export/tree_json.py format)."""
    trees = list(trees)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # No network: nothing may be fetched; only the inline style and script run.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head><body>",
        f'<header><h1>{_e(title)}</h1>',
    ]
    if len(trees) > 1:
        opts = "".join(f'<option value="{i}">{_e(_option_label(i, t))}</option>' for i, t in enumerate(trees))
        parts.append(f'<label>problem <select id="problem">{opts}</select></label>')
    parts.append('<button id="expand-all" type="button">expand all</button>'
                 '<button id="collapse-all" type="button">collapse all</button>'
                 '<button id="only-chosen" type="button" aria-pressed="false">chosen path only</button>'
                 '<span class="legend">click a node to fold / unfold its subtree \u00b7 '
                 'PRM = step score, path = aggregated path score, N = visits, V = value, '
                 'P = prior \u00b7 chosen path highlighted</span></header>')
    parts.append("<main>")
    if not trees:
        parts.append("<p>No trees were exported (run <code>lrm search export.tree=html</code>).</p>")
    for i, t in enumerate(trees):
        n = len(t.get("nodes") or [])
        hidden = " hidden" if i else ""
        parts.append(f'<section class="tree" id="tree-{i}" data-problem="{_e(t.get("id"))}" '
                     f'data-nodes="{n}"{hidden}>')
        parts.append(_meta_html(t))
        parts.extend(_tree_nodes_html(t))
        parts.append("</section>")
    parts.append("</main>")
    parts.append(f"<script>{_JS}</script>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def trees_from_records(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The tree dicts of results.jsonl records (those that have one), with the grading
    (``correct``, ``reference``) of the record copied in for display."""
    out = []
    for rec in records:
        t = rec.get("tree")
        if not t:
            continue
        t = dict(t)
        for key in ("correct", "reference"):
            if rec.get(key) is not None:
                t[key] = rec[key]
        out.append(t)
    return out


def write_html(trees: Iterable[Mapping[str, Any]], path: str | os.PathLike[str],
               title: str = "lrm search trees") -> Path:
    """Write the viewer to ``path`` (atomically); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_html(trees, title), encoding="utf-8")
    os.replace(tmp, path)
    return path
