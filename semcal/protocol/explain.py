"""`semcal explain RUN_DIR [--split=mild]` or `semcal explain EVALUATION_DIR`: one self-contained
HTML page per evaluation (no network, no external scripts).

The page holds the evaluation's summary numbers (results.json), its label-distribution figure
(embedded as a data URI) and a sortable table of texts: the tokens or n-grams that pushed THE
filter's score up and down most (per_text.csv, from the filter's own source), for a
language-model filter each token coloured by its log p_real - log p_general (the two score
files the evaluation read, checked against their fingerprints), the filter's score and
acceptance probability, and a decision drawn with the evaluation's seed: one uniform draw
per text, the same draws as the evaluation's first Monte Carlo run.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import re
from collections.abc import Sequence
from html import escape
from pathlib import Path

import numpy as np
import pandas as pd

from semcal.core.errors import UserError
from semcal.filter import filtering
from semcal.filter.sources import SOURCES
from semcal.protocol.evaluation_inputs import join_scores
from semcal.protocol.layout import FIGURE_STEM, PAGE_NAME, PER_TEXT_NAME, RESULTS_NAME, RunLayout
from semcal.reports import results as result_file
from semcal.reports.numbers import format_number
from semcal.reports.results import EvaluationResults, InputFile
from semcal.store import files, schema, score_files

log = logging.getLogger(__name__)

LANGUAGE_MODEL_SOURCES = tuple(name for name, source in SOURCES.items() if source.language_models)
COLORMAP = "RdBu"  # diverging: red where the general model likes a token more, blue where the real one does


def evaluation_folders(path: Path, split: str | None) -> list[Path]:
    """The evaluation folders `path` names: itself, RUN/evaluation/SPLIT, or every split of a run."""
    if not path.is_dir():
        raise UserError(
            f"{path} does not exist; pass a run folder (`semcal run`, `semcal demo`) or an evaluation folder."
        )
    if (path / RESULTS_NAME).is_file():
        if split is not None:
            raise UserError(f"{path} is an evaluation folder already; drop --split={split}.")
        return [path]
    layout = RunLayout(path)
    found = layout.evaluated_splits()
    if not found:
        raise UserError(
            f"{path} is not an evaluation folder (no {RESULTS_NAME}) nor a run folder with evaluation/*/{RESULTS_NAME}; "
            "run `semcal evaluate` (or `semcal run`) first."
        )
    if split is None:
        return [layout.evaluation_dir(name) for name in found]
    if not layout.results(split).is_file():
        raise UserError(f"{path} has no evaluation of split {split!r}; pass --split= one of {found}.")
    return [layout.evaluation_dir(split)]


def score_file(folder: Path, results: EvaluationResults, name: str) -> Path:
    """The score file `name` the evaluation read, found where results.json says (or in the run's scores/
    folder when the run moved), and unchanged since: its fingerprint must match results.json's."""
    entry = results.inputs.get(name)
    if not isinstance(entry, InputFile):
        raise UserError(f"{folder / RESULTS_NAME} does not name {name}; re-run `semcal evaluate` to record it.")
    written = Path(entry.path)
    candidates = [written, RunLayout.of_evaluation(folder).scores / written.parent.name / written.name]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise UserError(
            f"{name} {written}, which the evaluation in {folder} read, is missing (moved?); run `semcal explain` from "
            "the folder the evaluation ran in, or restore the file."
        )
    actual = files.fingerprint_file(path)
    if actual != entry.sha256_16:
        raise UserError(
            f"{name} {path} changed since the evaluation (fingerprint {actual}, results.json has {entry.sha256_16}); "
            "re-run `semcal evaluate` so the page explains the scores it measured."
        )
    return path


def token_table(folder: Path, results: EvaluationResults) -> dict[int, tuple[list[str], np.ndarray]]:
    """text_id -> (tokens, log p_real - log p_general per token), joined as the evaluation joined them."""
    general, real = (
        score_files.read_token_log_probs(score_file(folder, results, name))
        for name in ("general_scores_csv", "real_scores_csv")
    )
    ids, diffs, tokens, _ = join_scores(general, real, results.counts.general_test, "general_test")
    return {int(text_id): (pieces, d) for text_id, pieces, d in zip(ids, tokens, diffs, strict=True)}


def readable(token: str) -> str:
    """A byte-level BPE token as the text it stands for ('Ġdog' -> ' dog'), SentencePiece's '▁' as a space."""
    from tokenizers import decoders

    return decoders.ByteLevel().decode([token]).replace("▁", " ")


def token_colours(diffs: np.ndarray, limit: float) -> tuple[list[str], list[bool]]:
    """Background colour of each difference on the diverging scale [-limit, limit], and whether it is dark."""
    import matplotlib
    from matplotlib.colors import Normalize, to_hex

    shade = np.clip(Normalize(-limit, limit, clip=True)(diffs), 0.0, 1.0)
    colours = matplotlib.colormaps[COLORMAP](shade)
    return [to_hex(c) for c in colours], list(np.abs(shade - 0.5) > 0.35)  # white text on the darkest ends


SPECIAL_TOKEN = re.compile(r"^<\|[^|]*\|>$|^</?s>$")  # BOS / EOS the framing added: <|endoftext|>, <s>, </s>


def text_cell(tokens: list[str], diffs: np.ndarray, limit: float, caption: str | None = None) -> str:
    """The caption as the models scored it: each token coloured by its difference; a special token the
    framing added (the end of text, which is scored too) as a mark drawn by the style sheet, not as text;
    the end of a caption cut at max_length, which no token scored, uncoloured after the tokens. Without a
    caption, the tokens' own text."""
    colours, dark = token_colours(diffs, limit)
    spans, covered = [], ""
    for token, d, colour, white in zip(tokens, diffs.tolist(), colours, dark, strict=True):
        special = bool(SPECIAL_TOKEN.match(token))
        shown = "" if special else readable(token)
        covered += shown
        spans.append(
            f'<span class="tok" data-d="{d:.6g}" style="background:{colour}{";color:#fff" if white else ""}"'
            f'{" data-special" if special else ""} title="{escape(repr(token))} {d:+.3f}">{escape(shown)}</span>'
        )
    caption = covered.strip() if caption is None else caption
    rest = _unscored_rest(caption, covered)
    if rest:
        spans.append(f'<span class="cut" title="cut at max_length: not scored">{escape(rest)}</span>')
    return f'<td class="text" data-value="{escape(caption)}">{"".join(spans)}</td>'


def _unscored_rest(caption: str, covered: str) -> str:
    """The end of `caption` after the text its scored tokens cover ("" when they cover it all, or when the
    tokenizer changed the text so that the two cannot be lined up)."""
    for whole, part in ((caption, covered), (caption.strip(), covered.strip())):
        if whole.startswith(part):
            return whole[len(part) :]
    return ""


def number_cell(value: float) -> str:
    shown = "n/a" if value != value else format_number(float(value))
    return f'<td class="num" data-value="{value!r}">{shown}</td>'


def plain_cell(value: object, css: str = "") -> str:
    text = "" if value is None or value != value else str(value)  # NaN: an empty cell of per_text.csv
    return f'<td{f" class={chr(34)}{css}{chr(34)}" if css else ""} data-value="{escape(text)}">{escape(text)}</td>'


def rows_html(shown: pd.DataFrame, tokens: dict, limit: float) -> str:
    rows = []
    for row in shown.itertuples(index=False):
        decision = "accepted" if row.accepted else "rejected"
        caption = getattr(row, "text", None)
        scored = tokens.get(int(row.text_id))
        cells = [
            f'<td class="num" data-value="{int(row.text_id)}">{int(row.text_id)}</td>',
            f'<td data-value="{escape(str(row.label))}">{escape(str(row.label))}</td>',
            text_cell(*scored, limit, caption) if scored else plain_cell(caption, "text"),
            plain_cell(getattr(row, "tokens_up", ""), "why"),
            plain_cell(getattr(row, "tokens_down", ""), "why"),
            number_cell(float(row.score)),
            number_cell(float(row.accept_prob)),
            f'<td class="{decision}" data-value="{decision}">{decision}</td>',
        ]
        rows.append(f'<tr data-text-id="{int(row.text_id)}">{"".join(cells)}</tr>')
    return "\n".join(rows)


def summary_numbers(results: EvaluationResults) -> list[tuple[str, str, object]]:
    """(key, what, value) of the page's summary (shares as 0-1)."""
    semcal, oracle = results.chosen, results.filters.get("oracle")
    return [
        ("kl_general", "KL(general‖real)", results.kl_general),
        ("kl_filtered", f"KL(filtered‖real), mean over {results.monte_carlo.n_runs} runs", semcal.kl_mean),
        ("kl_filtered_std", "its standard deviation over runs", semcal.kl_std),
        ("deception_reduction", f"deception reduction of {results.filter_name} (%)", semcal.deception_reduction),
        ("oracle_deception_reduction", "deception reduction of the oracle (%)", oracle and oracle.deception_reduction),
        ("M", "M = |general_train| / |real_train|", results.M),
        ("ideal_pass_rate", "ideal pass rate 1/M (%)", results.ideal_pass_rate),
        ("pass_rate", f"pass rate of {results.filter_name}, mean over runs (%)", semcal.pass_rate_mean),
    ]


def summary_html(results: EvaluationResults) -> str:
    """The summary numbers; data-value holds each as results.json does, the cell shows shares in %."""
    rows = []
    for key, what, value in summary_numbers(results):
        shown = value * 100 if what.endswith("(%)") and isinstance(value, float) else value
        held = escape(json.dumps(schema.file_value(value)))
        rows.append(
            f'<tr><th>{escape(what)}</th><td class="num" data-key="{key}" data-value="{held}">'
            f"{escape(format_number(shown))}</td></tr>"
        )
    note = f"<p>{escape(results.kl_note)}</p>" if results.kl_note else ""
    return f'<table class="summary">{"".join(rows)}</table>{note}'


def figure_html(folder: Path) -> str:
    png = folder / f"{FIGURE_STEM}.png"
    if not png.is_file():
        log.warning("explain: %s is missing, so the page has no figure (re-run `semcal evaluate` to draw it)", png)
        return f'<p class="note">No figure: {escape(str(png))} is missing; re-run <code>semcal evaluate</code> to draw it.</p>'
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return f'<img alt="label distributions" src="data:image/png;base64,{data}">'


def reliability_html(folder: Path) -> str:
    """The reliability diagram the evaluation drew (semcal.reports.item_report), or a line saying it is missing."""
    from semcal.reports.item_report import FIGURE_STEM as RELIABILITY_STEM

    png = folder / f"{RELIABILITY_STEM}.png"
    if not png.is_file():
        return f'<p class="note">No reliability diagram: re-run <code>semcal evaluate</code> to draw {escape(png.name)}.</p>'
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return (
        "<p>Each filter's acceptance as the probability that a held-out general_train row belongs to the real split "
        "(binned), against the share that does; × marks the constant predictor 1/M.</p>"
        f'<img class="reliability" alt="reliability diagram" src="data:image/png;base64,{data}">'
    )


def legend_html(limit: float) -> str:
    stops = ", ".join(token_colours(np.linspace(-limit, limit, 9), limit)[0])
    return (
        f'<div class="legend"><span>{-limit:+.2f}</span><div class="bar" style="background:linear-gradient(to right, '
        f'{stops})"></div><span>{limit:+.2f}</span></div><p>Each token is coloured by log p<sub>real</sub> − '
        "log p<sub>general</sub>: blue where the real model finds it likelier (it pushes the score up, toward "
        "acceptance), red where the general model does; differences beyond ±"
        f"{limit:.2f} (the 95th percentile of |difference| on the page) take the end colours. Hover a token for its value.</p>"
    )


SORT_SCRIPT = """
function sortBy(th, descending) {
  const body = th.closest('table').tBodies[0], column = th.cellIndex, numeric = th.dataset.sort === 'number';
  const key = row => row.cells[column].dataset.value;
  const number = row => { const x = parseFloat(key(row)); return isNaN(x) ? -Infinity : x; };  // n/a sorts low
  const rows = Array.from(body.rows).sort((a, b) => {
    const order = numeric ? Math.sign(number(a) - number(b)) || 0 : key(a).localeCompare(key(b));
    return descending ? -order : order;
  });
  rows.forEach(row => body.appendChild(row));
  th.closest('tr').querySelectorAll('th').forEach(other => delete other.dataset.order);
  th.dataset.order = descending ? 'desc' : 'asc';
}
document.querySelectorAll('table.texts th[data-sort]').forEach(th =>
  th.addEventListener('click', () => sortBy(th, th.dataset.order === 'asc')));
const wanted = location.hash.match(/^#sort=(-?)(\\w+)$/);  // e.g. #sort=-score: a link to a sorted table
if (wanted) { const th = document.getElementById('col-' + wanted[2]); if (th) sortBy(th, wanted[1] === '-'); }
document.body.dataset.sortable = 'ready';
"""

STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: 4px 6px; vertical-align: top; }
table.texts th[data-sort] { cursor: pointer; background: #eee; } th[data-order=asc]::after { content: " ▲"; }
th[data-order=desc]::after { content: " ▼"; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.text { white-space: pre-wrap; max-width: 60em; line-height: 1.6; } td.why { font-size: 85%; max-width: 20em; } .tok { padding: 1px 0; }
.cut { color: #777; } .tok[data-special]::after { content: "\\2403"; } td.accepted { color: #1a7f37; font-weight: bold; } td.rejected { color: #b42318; }
.legend { display: flex; align-items: center; gap: 0.5em; } .legend .bar { width: 300px; height: 14px; }
.top { display: flex; flex-wrap: wrap; gap: 2em; } .top img { width: 540px; max-width: 100%; }
img.reliability { max-width: 100%; }
table.summary th { text-align: left; font-weight: normal; } .note { color: #b42318; }
"""


def page_html(
    folder: Path, results: EvaluationResults, table: pd.DataFrame, shown: pd.DataFrame, tokens: dict, seed: int
) -> str:
    title = f"semcal explain: {'/'.join(Path(results.dataset_name).parts[-2:])} / {results.distortion}"
    shown_diffs = np.concatenate([tokens[int(i)][1] for i in shown["text_id"] if int(i) in tokens] or [np.zeros(1)])
    limit = float(np.percentile(np.abs(shown_diffs), 95)) or 1.0
    source = results.chosen.log_ratio or results.filter_name
    why = (
        f"<p>pushed up / pushed down: the {'tokens' if tokens else 'n-grams'} that moved the score of "
        f"{escape(results.filter_name)} most, from its own source ({escape(str(source))}), with their "
        "contribution to the log-ratio.</p>"
    )
    legend = legend_html(limit) if tokens else ""
    which = (
        f"all {len(table)} evaluated texts"
        if len(shown) == len(table)
        else f"{len(shown)} of the {len(table)} evaluated texts, a uniform random sample (numpy default_rng({seed}), "
        "drawn after the decisions), in text_id order"
    )
    headers = [("text_id", "number"), ("label", "text"), ("text", "text")]
    headers += [("pushed_up", "text"), ("pushed_down", "text"), ("score", "number")]
    headers += [("accept_prob", "number"), ("decision", "text")]
    head = "".join(f'<th id="col-{name}" data-sort="{kind}">{name}</th>' for name, kind in headers)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title><style>{STYLE}</style></head>
<body>
<h1>{escape(title)}</h1>
<p>Evaluation folder <code>{escape(str(folder))}</code>; filter <b>{escape(results.filter_name)}</b>.</p>
<div class="top"><div><h2>Summary</h2>
{summary_html(results)}</div>
<div><h2>Label distributions</h2>
{figure_html(folder)}</div></div>
<h2>Reliability: is the acceptance a calibrated probability?</h2>
{reliability_html(folder)}
<h2>Texts</h2>
<p>Showing {escape(which)}. Score and accept_prob are the filter's (per_text.csv); the decision is one uniform draw
per text u &lt; accept_prob from numpy default_rng(seed={seed}), the evaluation's seed, over all texts in per_text.csv
order: the same draws as the evaluation's first Monte Carlo run. Click a column header to sort.</p>
{why}{legend}
<table class="texts"><thead><tr>{head}</tr></thead>
<tbody>
{rows_html(shown, tokens, limit)}
</tbody></table>
<script>{SORT_SCRIPT}</script>
</body></html>
"""


def explain(folder: Path, output: Path, rows: int) -> Path:
    """Write the page of the evaluation in `folder` to `output`."""
    per_text = folder / PER_TEXT_NAME
    if not per_text.is_file():
        raise UserError(f"{per_text} is missing; re-run `semcal evaluate` to write it.")
    results = result_file.read(folder / RESULTS_NAME)
    table = read_per_text(per_text)
    # Tokens are coloured for a filter over the language models, whose scores the evaluation read.
    source = results.chosen.log_ratio
    colour = source in LANGUAGE_MODEL_SOURCES and bool(results.config.get("general_scores_csv"))
    tokens = token_table(folder, results) if colour else {}
    lacking = sorted(set(table["text_id"].astype(int)) - set(tokens)) if colour else []
    if lacking:
        raise UserError(
            f"the score files lack text_id {lacking[:5]} of {per_text}; re-run `semcal evaluate` on the current scores."
        )
    seed = results.monte_carlo.seed
    rng = np.random.default_rng(seed)
    table["accepted"] = filtering.draw(table["accept_prob"].to_numpy(np.float64), rng)
    chosen = np.arange(len(table)) if len(table) <= rows else np.sort(rng.choice(len(table), rows, replace=False))
    shown = table.iloc[chosen]
    files.write_text(output, page_html(folder, results, table, shown, tokens, seed))
    log.info(
        "explain %s: %d of %d texts shown, %d accepted; written to %s",
        results.distortion,
        len(shown),
        len(table),
        int(table["accepted"].sum()),
        output,
    )
    return output


def read_per_text(path: Path) -> pd.DataFrame:
    """The per-text table (its caption and pushing-token columns too, when there are); one sentence when it is empty,
    not a CSV or lacks a column."""
    wanted = ["text_id", "label", "score", "accept_prob"]
    try:
        shown = {*wanted, "text", "tokens_up", "tokens_down"}
        table = files.read_csv(path, usecols=lambda column: column in shown, keep_default_na=False)
        missing = [column for column in wanted if column not in table.columns]
        if missing:
            raise KeyError(f"no column {', '.join(missing)}")
        table["text_id"] = table["text_id"].astype(int)
        table["accept_prob"] = table["accept_prob"].astype(float)
    except (ValueError, KeyError) as err:  # pandas' EmptyDataError and ParserError are ValueErrors
        raise UserError(
            f"{path} is not a per-text table of an evaluation ({str(err).strip()[:120] or type(err).__name__}); "
            "re-run `semcal evaluate` to write it again."
        ) from None
    if table.empty:
        raise UserError(f"{path} holds no texts; re-run `semcal evaluate` to write it again.")
    table["score"] = pd.to_numeric(table["score"], errors="coerce")  # an empty score (a filter without one): NaN
    return table


def main(argv: Sequence[str]) -> int:
    """`semcal explain RUN_DIR [--split=mild]`: an HTML page explaining each evaluation's decisions."""
    parser = argparse.ArgumentParser(prog="semcal explain", description=main.__doc__)
    parser.add_argument("path", type=Path, help="run folder (`semcal run`, `semcal demo`) or one evaluation folder")
    parser.add_argument("--split", default=None, help="evaluated split of a run folder (default: every split)")
    parser.add_argument("--rows", type=int, default=500, help="most texts in the table (default 500)")
    parser.add_argument("--output", type=Path, default=None, help=f"page path (default EVALUATION_DIR/{PAGE_NAME})")
    args = parser.parse_args(list(argv))
    if args.rows < 1:
        raise UserError(f"--rows must be at least 1 (got {args.rows}); pass e.g. --rows=500.")
    folders = evaluation_folders(args.path, args.split)
    if args.output is not None and len(folders) > 1:
        raise UserError(f"{args.path} holds {len(folders)} evaluations but --output names one page; add --split=.")
    for folder in folders:
        explain(folder, args.output or folder / PAGE_NAME, args.rows)
    return 0
