"""The moe section's old flat method keys (config/aliases.py): configs written before the method subsections.

tests/fixtures/config_flat_moe_keys/config.json is a run's config.json written by the code before the method subsections (graph
routing, AdamSMoE and an SMoE-Dropout schedule, every option off its default), and param_summary.json that model's
parameter summary then. Each way a config comes in (the config.json, a Python config file, a --config override, a
gin binding, the resume comparison) must give the same model as the config written with the subsections.
"""

from __future__ import annotations

import json
import pathlib
import shutil

import pytest

from samoe_jax.checkpointing import resume_config
from samoe_jax.config import aliases, config_file, gin_config
from samoe_jax.config.sections import MoeSection, complete_config
from samoe_jax.evaluation.checkpoints import run_config
from samoe_jax.layers.graph_routing import GraphConfig
from samoe_jax.layers.k_schedule import KSchedule
from samoe_jax.layers.momentum import MomentumConfig
from samoe_jax.models.model import LanguageModel
from samoe_jax.training.config_checks import config_errors, validate_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURE = ROOT / 'tests' / 'fixtures' / 'config_flat_moe_keys'

NESTED = {'graph': {'kind': 'similarity', 'lam': 0.5, 'lam_learned': True, 'temperature': 2.0, 'metric': 'learned',
                    'dim': 16},
          'momentum_smoe': {'kind': 'adam', 'mu': 0.6, 'gamma': 0.5, 'beta1': 0.8, 'beta2': 0.99, 'eps': 1e-6,
                            'adam_layers': 'all'},
          'smoe_dropout': {'kind': 'linear_increase', 'k_min': 1, 'k_max': 2, 'steps': 300}}


def _nested_config():
  """configs/tiny_similarity_moe.py with the fixture's method options, written with the subsections."""
  c = config_file.load(str(ROOT / 'configs' / 'tiny_similarity_moe.py'), lock=False)
  for sub, fields in NESTED.items():
    c.moe[sub].update(fields)
  return c


def test_the_table_names_every_subsection_field_once():
  new = sorted(aliases.DOTTED.values())
  assert len(new) == len(set(new))
  defaults = complete_config({})
  assert sorted(f'moe.{sub}.{k}' for sub in NESTED for k in defaults.moe[sub].keys()) == new
  assert not set(aliases.MOE_ALIASES) & set(defaults.moe.keys())   # an old key is never a new name


def test_a_config_json_with_the_old_keys_gives_the_same_model(tmp_path):
  shutil.copy(FIXTURE / 'config.json', tmp_path / 'config.json')
  old = run_config(str(tmp_path))
  assert not aliases.old_keys(old)
  validate_config(old)
  new = _nested_config()
  assert old.to_dict() == complete_config(new).to_dict()
  moe = MoeSection.of(old)
  assert GraphConfig(**moe.graph) == GraphConfig(**NESTED['graph'])
  assert MomentumConfig(**moe.momentum_smoe) == MomentumConfig(**NESTED['momentum_smoe'])
  assert KSchedule.from_config(old) == KSchedule('linear_increase', 1, 2, 300)
  model = LanguageModel(old)
  assert model.spec == LanguageModel(new).spec
  summary = {k: int(v) for k, v in model.param_summary().items()}
  assert summary == json.loads((FIXTURE / 'param_summary.json').read_text())


def test_a_python_config_file_with_the_old_keys_loads(tmp_path):
  path = tmp_path / 'old_style.py'
  path.write_text(
      'from samoe_jax.config.presets import tiny\n\n\n'
      'def get_config():\n'
      "  c = tiny('moe')\n"
      "  c.moe.graph_routing = 'similarity'\n"
      "  c.moe.similarity_metric = 'learned'\n"
      '  c.moe.similarity_dim = 16\n'
      '  c.moe.graph_lambda = 0.5\n'
      '  c.moe.graph_lambda_learned = True\n'
      '  c.moe.similarity_temperature = 2.0\n'
      "  c.moe.momentum = 'adam'\n"
      '  c.moe.momentum_mu, c.moe.momentum_gamma = 0.6, 0.5\n'
      '  c.moe.adam_beta1, c.moe.adam_beta2, c.moe.adam_eps = 0.8, 0.99, 1e-6\n'
      "  c.moe.adam_layers = 'all'\n"
      "  c.moe.k_schedule = 'linear_increase'\n"
      '  c.moe.k_min, c.moe.k_max, c.moe.k_schedule_steps = 1, 2, 300\n'
      '  return c\n')
  config = config_file.load(str(path))
  assert config.is_locked and not aliases.old_keys(config)
  assert config.to_dict() == _nested_config().to_dict()


def test_old_override_arguments_and_gin_bindings_set_the_subsections(tmp_path):
  argv = ['prog', '--config=x.py', '--config.moe.graph_lambda=0.5', '--config.moe.k_min=2', '--config.moe.top_k=1',
          '--workdir=w']
  assert aliases.rewrite_override_args(argv) == [
      'prog', '--config=x.py', '--config.moe.graph.lam=0.5', '--config.moe.smoe_dropout.k_min=2',
      '--config.moe.top_k=1', '--workdir=w']
  gin_file = tmp_path / 'old.gin'
  gin_file.write_text(f"samoe.experiment.config_file = '{ROOT / 'configs' / 'tiny_similarity_moe.py'}'\n"
                      'samoe.moe.graph_lambda = 0.5\n'
                      "samoe.moe.momentum = 'heavy_ball'\n"
                      "samoe.moe.smoe_dropout = {'k_min': 3}\n")
  config = gin_config.config_from_gin([str(gin_file)])
  assert (config.moe.graph.lam, config.moe.momentum_smoe.kind, config.moe.smoe_dropout.k_min) == (
      0.5, 'heavy_ball', 3)
  assert config.moe.graph.kind == 'similarity' and config.moe.smoe_dropout.kind == 'constant'


def test_a_problem_names_the_key_as_the_config_wrote_it():
  old = _nested_config()
  old.moe.graph_lambda = 1.5
  old.moe.graph_lambda_learned = False
  assert any(line.startswith('moe.graph_lambda=1.5: must lie in') and 'moe.graph_lambda is now moe.graph.lam' in line
             for line in config_errors(old))
  new = _nested_config()
  new.moe.graph.lam, new.moe.graph.lam_learned = 1.5, False
  assert any(line.startswith('moe.graph.lam=1.5: must lie in') for line in config_errors(new))
  new.moe.graph.lamb = 3
  assert any(line.startswith('moe.graph.lamb=3: unknown key; config.moe.graph has: ') for line in config_errors(new))


def test_resume_compares_an_old_config_json_in_the_new_keys(tmp_path):
  shutil.copy(FIXTURE / 'config.json', tmp_path / 'config.json')
  current = complete_config(_nested_config())
  assert resume_config.config_changes(str(tmp_path), current) == []
  current.moe.graph.lam = 0.25
  assert resume_config.config_changes(str(tmp_path), current) == ['moe.graph.lam: 0.5 -> 0.25']


@pytest.mark.parametrize('key', sorted(aliases.MOE_ALIASES))
def test_every_old_key_resolves(key):
  sub, field = aliases.MOE_ALIASES[key]
  resolved = aliases.resolve({'moe': {key: 'x', sub: {field: 'y', 'other': 1}}})
  assert resolved == {'moe': {sub: {field: 'x', 'other': 1}}}
