"""`semcal explain`: the self-contained HTML page of an evaluation (summary numbers, the figure,
a sortable table of texts with each token coloured by its log-prob difference), checked as
text and in a real browser (headless Chromium) when one is installed."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from semcal.cli.cli import main
from semcal.core.errors import UserError
from semcal.filter.filtering import draw
from semcal.protocol.explain import main as explain_main
from semcal.store import files
from tests.results_example import results_dict
from tests.test_filtering import lm_run, tfidf_run  # noqa: F401  (fixtures: an LM and a TF-IDF evaluation)

ROWS = 25  # of the fixture's 40 texts: the page shows a sample
BROWSERS = (
    "chromium-headless-shell",
    "chromium",
    "/usr/lib/chromium/chromium-headless-shell",
    "/usr/lib/chromium/chromium",
)
NO_BROWSER = "no Chromium: install it with `apt-get install chromium-headless-shell`"


@pytest.fixture(scope="module")
def page(lm_run):  # noqa: F811
    folder = lm_run["root"] / "out"
    assert main(["explain", str(folder), f"--rows={ROWS}"]) == 0
    text = (folder / "explain.html").read_text(encoding="utf-8")
    return {"folder": folder, "html": text, "results": lm_run["results"], "per_text": lm_run["per_text"]}


def token_spans(text: str) -> list[tuple[float, str]]:
    """(log-prob difference, background colour) of every token span of the page."""
    return [
        (float(d), colour) for d, colour in re.findall(r'class="tok" data-d="([^"]+)" style="background:(#\w{6})', text)
    ]


def rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))


def test_the_page_is_self_contained(page):
    text = page["html"]
    assert "http://" not in text and "https://" not in text
    assert not re.search(r"<script[^>]*\ssrc=", text), "no external scripts"
    assert not re.search(r'\s(?:src|href)="(?!data:)', text), "every src/href is an embedded data URI"
    assert '<img alt="label distributions" src="data:image/png;base64,' in text


def test_the_summary_numbers_are_the_evaluations(page):
    results = page["results"]
    shown = {
        key: json.loads(html.unescape(value))
        for key, value in re.findall(r'data-key="(\w+)" data-value="([^"]*)"', page["html"])
    }
    semcal = results["filters"]["semcal"]
    assert shown == {
        "kl_general": results["kl_general"],
        "kl_filtered": semcal["kl_mean"],
        "kl_filtered_std": semcal["kl_std"],
        "deception_reduction": semcal["deception_reduction"],
        "oracle_deception_reduction": results["filters"]["oracle"]["deception_reduction"],
        "M": results["M"],
        "ideal_pass_rate": results["ideal_pass_rate"],
        "pass_rate": semcal["pass_rate_mean"],
    }
    assert shown["M"] == pytest.approx(1 / shown["ideal_pass_rate"])


def test_one_row_per_shown_text_with_the_seeded_decision(page):
    per_text, seed = page["per_text"], page["results"]["config"]["seed"]
    rows = re.findall(r'<tr data-text-id="(\d+)">(.*?)</tr>', page["html"], flags=re.S)
    assert len(rows) == ROWS < len(per_text)
    assert f"Showing {ROWS} of the {len(per_text)} evaluated texts" in page["html"]
    rng = np.random.default_rng(seed)
    accepted = draw(per_text["accept_prob"].to_numpy(), rng)
    sample = np.sort(rng.choice(len(per_text), ROWS, replace=False))
    assert [int(text_id) for text_id, _ in rows] == per_text["text_id"].iloc[sample].tolist()
    for text_id, cells in rows:
        expected = per_text.set_index("text_id").loc[int(text_id)]
        assert cells.count('class="tok"') == expected["n_tokens"]
        decision = "accepted" if accepted[per_text["text_id"].tolist().index(int(text_id))] else "rejected"
        assert f'data-value="{decision}">{decision}</td>' in cells
        accept_prob = float(re.findall(r'data-value="([^"]+)"', cells)[-2])
        assert accept_prob == pytest.approx(expected["accept_prob"], rel=1e-12)
    assert {"accepted", "rejected"} <= set(re.findall(r'data-value="(accepted|rejected)"', page["html"]))


def test_token_colours_follow_the_sign_of_the_log_prob_difference(page):
    spans = token_spans(page["html"])
    assert len(spans) > 100
    strong = [(d, rgb(colour)) for d, colour in spans if abs(d) > 0.5]
    assert sum(d > 0 for d, _ in strong) > 10 and sum(d < 0 for d, _ in strong) > 10
    for d, (red, _, blue) in strong:
        assert (blue > red) == (d > 0), f"difference {d:+.3f} drawn as {(red, blue)}"


def test_tokens_read_as_the_text(page):
    """Byte-level BPE markers ('Ġ' for a space) become the characters they stand for."""
    first = re.search(r'<td class="text" data-value="([^"]*)">(.*?)</td>', page["html"], flags=re.S)
    shown = "".join(re.findall(r">([^<]*)</span>", first.group(2)))
    assert "Ġ" not in shown and " " in shown
    text_id = int(re.search(r'<tr data-text-id="(\d+)">', page["html"]).group(1))
    caption = page["per_text"].set_index("text_id").loc[text_id, "text"]
    assert html.unescape(shown) == caption and html.unescape(first.group(1)) == caption
    assert ">&lt;|endoftext|&gt;<" not in page["html"], "the framing's special tokens are not shown as text"


def test_the_page_is_reproducible(page, tmp_path):
    output = tmp_path / "again.html"
    assert explain_main([str(page["folder"]), f"--rows={ROWS}", f"--output={output}"]) == 0
    assert output.read_text(encoding="utf-8") == page["html"]


@pytest.fixture
def moved_run(lm_run, tmp_path):  # noqa: F811
    """The evaluation copied into a run folder's layout, its score files moved beside it (RUN/scores/...)."""
    run = tmp_path / "run"
    shutil.copytree(lm_run["root"] / "out", run / "evaluation" / "animals")
    shutil.copytree(lm_run["root"] / "scores", run / "scores")
    results_path = run / "evaluation" / "animals" / "results.json"
    results = files.read_json(results_path)
    for name in ("general_scores_csv", "real_scores_csv"):
        results["inputs"][name]["path"] = results["inputs"][name]["path"].replace(str(lm_run["root"]), "/gone")
    files.write_json(results_path, results)
    return run


def test_a_run_folder_gives_a_page_per_split_and_finds_moved_scores(moved_run):
    assert explain_main([str(moved_run)]) == 0
    assert (moved_run / "evaluation" / "animals" / "explain.html").is_file()
    with pytest.raises(UserError, match="no evaluation of split 'mild'.*animals"):
        explain_main([str(moved_run), "--split=mild"])


def test_changed_or_missing_score_files_are_refused(moved_run):
    scores = moved_run / "scores" / "general_test.real" / "token_log_probs.csv"
    scores.write_text(scores.read_text() + "\n")
    with pytest.raises(UserError, match="real_scores_csv .* changed since the evaluation .*re-run `semcal evaluate`"):
        explain_main([str(moved_run)])
    scores.unlink()
    with pytest.raises(UserError, match="real_scores_csv /gone/.* is missing"):
        explain_main([str(moved_run), "--split=animals"])


def test_a_missing_figure_leaves_a_note(moved_run):
    folder = moved_run / "evaluation" / "animals"
    (folder / "label_distributions.png").unlink()
    assert explain_main([str(folder), "--rows=3"]) == 0
    text = (folder / "explain.html").read_text(encoding="utf-8")
    assert "No figure:" in text and "data:image/png" not in text and text.count("<tr data-text-id=") == 3


def test_user_mistakes_are_one_clear_message(tmp_path, moved_run, capsys):
    assert main(["explain", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(UserError, match="not an evaluation folder"):
        explain_main([str(tmp_path)])
    with pytest.raises(UserError, match="--rows must be at least 1"):
        explain_main([str(moved_run), "--rows=0"])
    (moved_run / "evaluation" / "mild").mkdir()
    shutil.copy(moved_run / "evaluation" / "animals" / "results.json", moved_run / "evaluation" / "mild")
    with pytest.raises(UserError, match="2 evaluations but --output names one page"):
        explain_main([str(moved_run), f"--output={tmp_path / 'page.html'}"])
    with pytest.raises(UserError, match="per_text.csv is missing"):
        explain_main([str(moved_run), "--split=mild"])


def test_a_broken_results_json_or_per_text_table_is_one_clear_message(tmp_path, capsys):
    folder = tmp_path / "evaluation"
    folder.mkdir()
    (folder / "per_text.csv").write_text("")
    (folder / "results.json").write_text('{"stage": "evaluate", "filters": ')  # cut short
    assert main(["explain", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "results.json cannot be read" in err and "re-run `semcal evaluate`" in err and "Traceback" not in err
    files.write_json(folder / "results.json", results_dict(["a"], {"a": 1.0}))
    for content, message in (("", "is not a per-text table"), ("text_id,label,score,accept_prob\n", "holds no texts")):
        (folder / "per_text.csv").write_text(content)
        assert main(["explain", str(folder)]) == 2
        err = capsys.readouterr().err
        assert message in err and "re-run `semcal evaluate`" in err and "Traceback" not in err


def test_the_text_cell_shows_the_caption_not_the_models_cut_tokens():
    from semcal.protocol.explain import text_cell

    tokens = ["a", "Ġdog", "Ġbarks", "<|endoftext|>"]
    cell = text_cell(tokens, np.array([0.5, -0.5, 0.1, 0.2]), 1.0, "a dog barks")
    assert 'data-value="a dog barks"' in cell and cell.count('class="tok"') == 4, "every scored token is coloured"
    assert re.search(r'class="tok"[^>]* data-special title="&#x27;&lt;\|endoftext\|&gt;&#x27; \+0.200"></span>', cell)
    cut = text_cell(tokens[:2], np.array([0.5, -0.5]), 1.0, "a dog barks at the mailman")  # cut at max_length
    assert 'data-value="a dog barks at the mailman"' in cut
    assert re.search(r'<span class="cut" title="cut at max_length: not scored"> barks at the mailman</span>', cut)


# ---------------------------------------------------------------------------------------
# In a real browser


def find_browser() -> str | None:
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


def run_browser(browser: str, *arguments: str) -> subprocess.CompletedProcess:
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def test_a_browser_renders_the_table_and_the_token_colours(page, tmp_path):
    from PIL import Image

    browser = find_browser()
    if browser is None:
        pytest.skip(NO_BROWSER)
    url = (page["folder"] / "explain.html").resolve().as_uri()
    screenshot = tmp_path / "explain.png"
    run_browser(browser, f"--screenshot={screenshot}", "--window-size=1200,1600", url)
    pixels = np.asarray(Image.open(screenshot).convert("RGB")).reshape(-1, 3)
    colours = {rgb(colour): d for d, colour in token_spans(page["html"])}
    drawn = pd.Series([colours.get(tuple(pixel)) for pixel in np.unique(pixels, axis=0).tolist()]).dropna()
    assert (drawn > 1).sum() >= 3, "strong blue token backgrounds are on screen"
    assert (drawn < -1).sum() >= 3, "strong red token backgrounds are on screen"

    # The page's script ran (it marks <body>) and sorted the table as the address asked: by score, descending.
    dom = run_browser(browser, "--dump-dom", url + "#sort=-score").stdout
    assert '<body data-sortable="ready">' in dom and 'id="col-score" data-sort="number" data-order="desc"' in dom
    ids = [int(text_id) for text_id in re.findall(r'<tr data-text-id="(\d+)">', dom)]
    scores = page["per_text"].set_index("text_id").loc[ids, "score"].to_numpy()
    assert len(ids) == ROWS and (np.diff(scores) <= 0).all() and (np.diff(ids) != 1).any()


def test_a_text_filter_is_explained_by_its_own_n_grams(tfidf_run):  # noqa: F811
    """THE filter tfidf_labmom decides from TF-IDF n-grams: the page lists them, and colours no LM tokens."""
    folder = tfidf_run["root"] / "out"
    assert main(["explain", str(folder), "--rows=10"]) == 0
    text = (folder / "explain.html").read_text(encoding="utf-8")
    assert 'class="tok"' not in text and "from its own source (tfidf)" in text
    rows = re.findall(r'<tr data-text-id="(\d+)">(.*?)</tr>', text, flags=re.S)
    per_text = tfidf_run["per_text"].set_index("text_id")
    assert len(rows) == 10
    for text_id, cells in rows:
        up = per_text.loc[int(text_id), "tokens_up"]
        assert f'<td class="why" data-value="{html.escape(up)}">' in cells
        for ngram in re.findall(r"'([^']+)' [+-]", up):
            assert ngram in per_text.loc[int(text_id), "text"].lower()
