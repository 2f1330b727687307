"""The run report's loss figure: cross-entropy only, y range fitted after warm-up, perplexity, aux share."""

from __future__ import annotations

import json
import math

import pytest

from samoe_jax.analysis import run_report
from samoe_jax.analysis import loss_curves


def _train(aux: float) -> list[dict]:
  """100 logged steps (10, 20, ..., 1000): cross-entropy 9.0 at step 10 then 4 + 1/k, loss = CE + aux."""
  rows = []
  for k in range(1, 101):
    ce = 9.0 if k == 1 else 4.0 + 1.0 / k
    rows.append({'kind': 'train', 'step': 10 * k, 'loss': ce + aux, 'cross_entropy': ce})
  return rows


def _evals(aux: float) -> list[dict]:
  return [{'kind': 'eval', 'step': s, 'eval/loss': ce + aux, 'eval/cross_entropy': ce,
           'eval/perplexity': math.exp(ce)} for s, ce in ((500, 4.1), (1000, 4.05))]


def test_moe_run_shows_cross_entropy_perplexity_and_the_aux_share():
  data = loss_curves.loss_plot_data(_train(0.02), _evals(0.02), warmup_steps=50)
  assert [s.label for s in data.main] == ['train cross-entropy',
                                          f'validation cross-entropy (final perplexity {math.exp(4.05):.2f})']
  assert data.main[0].values[:2] == (9.0, 4.5) and data.main[1].steps == (500, 1000)
  assert data.final_perplexity == pytest.approx(math.exp(4.05))
  # fitted from step 100 (10% of 1000 > 50 warm-up steps): the top is CE at step 100 (4.1) padded by 5%
  assert data.fit_from == 100 and data.off_top == 9.0
  lo, hi = data.ylim
  span = 4.0 + 1 / 10 - (4.0 + 1 / 100)
  assert hi == pytest.approx(4.1 + 0.05 * span) and lo == pytest.approx(4.01 - 0.05 * span)
  assert 'fitted to steps >= 100' in data.title() and 'up to 9.00, are off the top' in data.title()
  assert [s.label for s in data.aux] == ['train', 'validation']
  assert all(v == pytest.approx(0.02) for s in data.aux for v in s.values) and len(data.aux[0].values) == 100


def test_warmup_longer_than_a_tenth_sets_where_the_fit_starts():
  assert loss_curves.loss_plot_data(_train(0.0), [], warmup_steps=300).fit_from == 300


def test_dense_run_draws_no_duplicate_line_and_no_aux_panel():
  data = loss_curves.loss_plot_data(_train(0.0), _evals(0.0))
  assert len(data.main) == 2 and data.aux == ()
  data = loss_curves.loss_plot_data(_train(5e-5), _evals(0.0))   # float rounding is no auxiliary loss
  assert data.aux == ()


def test_short_runs_fit_every_point_and_loss_only_runs_say_loss():
  rows = [{'kind': 'train', 'step': 1, 'loss': 6.0}, {'kind': 'train', 'step': 2, 'loss': 5.0}]
  data = loss_curves.loss_plot_data(rows, [])
  assert data.ylabel == 'loss, nats per token' and data.title() == 'Loss'
  assert data.ylim == pytest.approx((4.95, 6.05)) and data.off_top is None and data.final_perplexity is None
  assert [s.label for s in data.main] == ['train loss']
  assert loss_curves.loss_plot_data([], []) is None


def test_report_draws_the_figure_from_the_data(tmp_path, monkeypatch):
  with open(tmp_path / 'metrics.jsonl', 'w') as f:
    for r in _train(0.02) + _evals(0.02):
      f.write(json.dumps(r) + '\n')
  (tmp_path / 'config.json').write_text(json.dumps({'train': {'warmup_steps': 200}}))
  drawn = []
  monkeypatch.setattr(loss_curves.plt, 'close', drawn.append)
  path = run_report.write_report(str(tmp_path))
  assert '![loss_curves.png](loss_curves.png)' in open(path).read()
  assert (tmp_path / 'loss_curves.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  main, aux = drawn[0].axes[0], drawn[0].axes[-1]
  expected = loss_curves.loss_plot_data(_train(0.02), _evals(0.02), warmup_steps=200)
  assert main.get_ylim() == pytest.approx(expected.ylim) and expected.fit_from == 200
  assert [line.get_label() for line in main.get_lines()] == [s.label for s in expected.main]
  assert any(a.get_ylabel() == 'perplexity = exp(cross-entropy)' for a in main.child_axes)
  assert aux.get_ylabel().startswith('loss - cross-entropy')
