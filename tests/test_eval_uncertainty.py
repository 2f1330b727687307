"""Evaluation scores with their uncertainty: standard errors, document counts, the bar chart's data."""

from __future__ import annotations

import json
import math

import pytest

from samoe_jax.evaluation import bar_chart, outputs, uncertainty

SCORES = {'piqa': {'acc': 2 / 3, 'acc_norm': 1 / 3}, 'triviaqa': {'exact_match': 0.25},
          'lambada_openai': {'acc': 0.5, 'perplexity': 41.5}, 'ppl:a.txt': {'token_perplexity': 9.0}}
DETAILS = {'piqa': {'num_docs': 3, 'stderr': {'acc': None, 'acc_norm': None}},            # bootstrap_iters=0
           'triviaqa': {'num_docs': 400, 'stderr': {'exact_match': 0.0125}},              # the harness's
           'lambada_openai': {'num_docs': 100, 'stderr': {'acc': 0.05, 'perplexity': 3.5}}}


def test_binomial_stderr_is_the_harness_stderr_of_zero_one_values():
  xs = [1.0, 1.0, 0.0, 1.0, 0.0]
  mean = sum(xs) / len(xs)
  harness = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) / math.sqrt(len(xs))
  assert uncertainty.binomial_stderr(mean, len(xs)) == pytest.approx(harness, rel=1e-12)
  assert uncertainty.binomial_stderr(0.5, 1) is None and uncertainty.binomial_stderr(41.5, 10) is None


def test_scores_take_the_reported_stderr_else_the_binomial_one():
  rows = {(s.task, s.metric): s for s in uncertainty.scores_with_errors(SCORES, DETAILS)}
  piqa = rows[('piqa', 'acc')]
  assert piqa.stderr == pytest.approx(math.sqrt(2 / 3 * 1 / 3 / 2)) and piqa.stderr_kind == 'binomial'
  assert piqa.num_docs == 3 and piqa.too_few
  trivia = rows[('triviaqa', 'exact_match')]
  assert (trivia.stderr, trivia.stderr_kind, trivia.num_docs, trivia.too_few) == (0.0125, 'reported', 400, False)
  assert rows[('lambada_openai', 'perplexity')].stderr == 3.5 and not rows[('lambada_openai', 'acc')].too_few
  ppl = rows[('ppl:a.txt', 'token_perplexity')]
  assert (ppl.stderr, ppl.stderr_kind, ppl.num_docs, ppl.too_few) == (None, None, None, False)


def test_bar_chart_data_has_error_bars_counts_and_the_small_n_mark():
  data = bar_chart.bar_chart_data(SCORES, DETAILS)
  assert data.tasks == ('lambada_openai', 'piqa', 'triviaqa') and data.width == pytest.approx(0.4)
  assert data.tick_labels == ('lambada_openai\nn=100', 'piqa\nn=3*', 'triviaqa\nn=400')
  assert data.too_few == (False, True, False)
  assert data.note() == '1 of 3 tasks scored on < 100 documents (*): n too small to read'
  acc, acc_norm, exact = data.bars
  assert (acc.metric, acc_norm.metric, exact.metric) == ('acc', 'acc_norm', 'exact_match')
  se = 100 * math.sqrt(2 / 3 * 1 / 3 / 2)   # 33.3 points from 3 documents
  # lambada has one plotted metric (centred on its task), piqa two (side by side), triviaqa one
  assert acc.xs == pytest.approx((0.0, 0.8)) and acc_norm.xs == pytest.approx((1.2,)) and exact.xs == (2.0,)
  assert acc.values == pytest.approx((50.0, 200 / 3)) and acc.too_few == (False, True)
  assert acc.below == pytest.approx((5.0, se)) and acc.above == pytest.approx((5.0, se))
  assert acc_norm.values == pytest.approx((100 / 3,)) and exact.below == exact.above == (1.25,)
  assert acc.labels == ('50.0±5.0', f'66.7±{se:.1f}') and exact.labels == ('25.0±1.2',)


def test_error_bars_stop_at_0_and_100_percent():
  se = 100 * math.sqrt(0.9 * 0.1 / 2)   # 21.2 points
  high, = bar_chart.bar_chart_data({'copa': {'acc': 0.9}}, {'copa': {'num_docs': 3}}).bars
  low, = bar_chart.bar_chart_data({'copa': {'acc': 0.1}}, {'copa': {'num_docs': 3}}).bars
  assert high.below == pytest.approx((se,)) and high.above == pytest.approx((10.0,))
  assert low.below == pytest.approx((10.0,)) and low.above == pytest.approx((se,))


def test_results_without_details_draw_bars_without_errors():
  data = bar_chart.bar_chart_data({'piqa': {'acc': 0.5}}, None)
  assert data.tick_labels == ('piqa\nn=?',) and data.bars[0].labels == ('50.0',) and data.note() == ''
  assert math.isnan(data.bars[0].below[0]) and math.isnan(data.bars[0].above[0])
  assert bar_chart.bar_chart_data({'ppl:x.txt': {'word_perplexity': 3.0}}, {}) is None


def test_results_png_draws_the_data(tmp_path, monkeypatch):
  drawn = []
  monkeypatch.setattr(bar_chart.plt, 'close', drawn.append)
  out = outputs.write_step_results(str(tmp_path), 6, SCORES, DETAILS)
  assert json.loads(open(f'{out}/results.json').read())['details']['piqa']['num_docs'] == 3
  ax = drawn[0].axes[0]
  assert [t.get_text() for t in ax.get_xticklabels()] == ['lambada_openai\nn=100', 'piqa\nn=3*', 'triviaqa\nn=400']
  assert ax.get_title() == 'step 6 (0-shot)\n1 of 3 tasks scored on < 100 documents (*): n too small to read'
  texts = {t.get_text() for t in ax.texts}
  assert {'50.0±5.0', '25.0±1.2', '33.3±33.3'} <= texts
  hatched = [p.get_hatch() for p in ax.patches if p.get_height() > 0]
  assert hatched.count('//') == 2 and len(hatched) == 4   # piqa's acc and acc_norm bars


def test_report_md_lists_evaluation_results_with_errors_counts_and_commands(tmp_path):
  from samoe_jax.analysis import run_report  # pylint: disable=g-import-not-at-top
  from samoe_jax.evaluation import report_table  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path)
  assert report_table.evaluation_lines(workdir) == []
  command = 'python -m samoe_jax.evaluate --workdir=W --tasks=piqa,triviaqa,lambada_openai'
  outputs.write_step_results(workdir, 8, SCORES, DETAILS, None, command)
  outputs.write_step_results(workdir, 8, {'boolq': {'acc': 0.5}}, {'boolq': {'num_docs': 3}}, None)
  outputs.write_step_results(workdir, 4, {'piqa': {'acc': 0.5}}, {'piqa': {'num_docs': 3}},
                             {'num_fewshot': 5, 'fewshot_seeds': [1234], 'limit': None}, 'samoe_jax.train periodic')
  (tmp_path / 'metrics.jsonl').write_text(json.dumps({'kind': 'train', 'step': 8, 'loss': 3.0}) + '\n')
  text = open(run_report.write_report(workdir)).read()
  section = text[text.index('## Evaluation'):text.index('## Figures')]
  assert section.index('### Step 4 (5-shot, seeds 1234): `eval/step_4_5shot_seeds1234/results.json`') < section.index(
      '### Step 8 (0-shot): `eval/step_8/results.json`')
  assert '- from `samoe_jax.train periodic` (piqa)' in section
  assert f'- from `{command}` (lambada_openai, piqa, ppl:a.txt, triviaqa)' in section
  assert '- command not recorded (boolq)' in section
  se = 100 * math.sqrt(2 / 3 * 1 / 3 / 2)
  assert f'| piqa | acc (%) | 66.67 | ± {se:.2f} (binomial) | 3 (too few to read) |' in section
  assert '| triviaqa | exact_match (%) | 25.00 | ± 1.25 | 400 |' in section
  assert '| lambada_openai | perplexity | 41.5 | ± 3.5 | 100 |' in section
  assert '| ppl:a.txt | token_perplexity | 9 | — | ? |' in section
  assert '| boolq | acc (%) | 50.00 | ± 35.36 (binomial) | 3 (too few to read) |' in section
