"""Config files, validate_config error messages, layer plans and pool assignment."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys
from typing import Callable

import ml_collections
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from samoe_jax.config import defaults  # noqa: E402
from samoe_jax.config.layer_plan import moe_layer_indices, pool_assignment  # noqa: E402
from samoe_jax.config.sections import complete_config  # noqa: E402
from samoe_jax.training.config_checks import config_errors, validate_config  # noqa: E402

CONFIG_FILES = sorted((ROOT / 'configs').glob('*.py'))


def load_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """configs/<name>.py's get_config() (as ml_collections.config_flags would call it)."""
  spec = importlib.util.spec_from_file_location(f'configs_{name}', ROOT / 'configs' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config() if arg is None else module.get_config(arg)


def flat_keys(c: ml_collections.ConfigDict) -> set[str]:
  return {f'{s}.{k}' for s in c for k in c[s]}


# ------------------------------------------------------------------------------------------------ config files
def test_expected_config_files_exist():
  names = {p.stem for p in CONFIG_FILES}
  assert {'tiny_dense', 'tiny_moe', 'tiny_samoe', 'tiny_tied', 'test_tiny', 'bench_moe', 'bench_dense',
          'bench_samoe', 'gpt3_350m_moe128', 'gpt3_1p3b_moe128', 'gpt3_350m_samoe', 'gpt3_1p3b_samoe',
          'gpt3_350m_dense', 'gpt3_1p3b_dense'} <= names


@pytest.mark.parametrize('path', CONFIG_FILES, ids=lambda p: p.stem)
def test_config_file_loads_and_validates(path):
  config = load_config(path.stem)
  validate_config(config)
  # Starts from the base config: same keys, none renamed or added.
  assert flat_keys(config) == flat_keys(defaults.get_base_config())
  source = path.read_text()
  assert source.startswith('"""') and 'Run:' in source, 'header docstring with how to run it'


@pytest.mark.parametrize('name', ['gpt3_350m_samoe', 'gpt3_1p3b_samoe'])
def test_samoe_pool_size_argument(name):
  assert load_config(name).pool.size == 2
  config = load_config(name, '4')
  assert config.pool.size == 4 and config.pool.mixing == 'learned'
  validate_config(config)
  with pytest.raises(ValueError, match='pool size'):
    load_config(name, 'x')


def test_config_roles():
  assert moe_layer_indices(load_config('tiny_dense').model) == []
  moe = load_config('tiny_moe')
  assert moe.pool.mixing == 'fixed' and moe.pool.size == len(moe_layer_indices(moe.model)) == 2
  assert load_config('tiny_tied').pool.size == 1
  assert load_config('tiny_samoe').pool.mixing == 'learned'
  tiny = load_config('test_tiny')
  assert (tiny.model.d_model, tiny.model.num_layers, tiny.model.num_heads, tiny.moe.num_experts,
          tiny.data.seq_len, tiny.data.batch_size, tiny.data.vocabulary, tiny.data.task) == (
              32, 2, 2, 4, 16, 4, 'byte', 'shakespeare_tiny')
  assert tiny.model.vocab_size >= 259
  bench = [load_config(n) for n in ('bench_moe', 'bench_dense', 'bench_samoe')]
  for c in bench:
    assert (c.model.d_model, c.model.num_layers, c.model.num_heads, c.model.d_ff, c.data.seq_len,
            c.data.batch_size, c.model.vocab_size, c.model.dtype) == (256, 4, 4, 1024, 256, 8, 32000, 'float32')
  assert bench[1].model.layer_plan == 'none'
  assert (bench[0].moe.num_experts, bench[0].moe.top_k, bench[0].moe.capacity_factor_train) == (8, 2, 1.25)
  assert bench[0].pool.mixing == 'fixed' and bench[2].pool.mixing == 'learned'
  for name in ('gpt3_350m_moe128', 'gpt3_1p3b_moe128'):
    c = load_config(name)
    assert (c.moe.num_experts, c.moe.top_k, c.moe.capacity_factor_train, c.moe.capacity_factor_eval,
            c.moe.min_capacity, c.moe.lb_loss_coef, c.model.init_std, c.data.seq_len) == (
                128, 1, 1.0, 1.0, 4, 0.01, 0.014, 2048)
    assert len(moe_layer_indices(c.model)) == 12 and c.pool.size == 12 and c.pool.mixing == 'fixed'
  c350, c13 = load_config('gpt3_350m_moe128'), load_config('gpt3_1p3b_moe128')
  assert (c350.train.learning_rate, c350.data.batch_size) == (2.0e-4, 256)
  assert c350.train.learning_rate * c350.train.min_lr_ratio == pytest.approx(2e-6)
  assert (c13.train.learning_rate, c13.data.batch_size) == (1.2e-4, 512)
  assert c13.train.learning_rate * c13.train.min_lr_ratio == pytest.approx(1e-6)
  # 375M warm-up tokens and 300B training tokens.
  assert c350.train.warmup_steps * 256 * 2048 == pytest.approx(375e6, rel=0.01)
  assert c350.train.steps * 256 * 2048 == pytest.approx(300e9, rel=1e-5)


# --------------------------------------------------------------------------------------------- validation
def base(**sections) -> ml_collections.ConfigDict:
  c = defaults.get_base_config()
  for path, value in sections.items():
    section, key = path.split('__')
    c[section][key] = value
  return c


def test_base_config_is_valid():
  validate_config(defaults.get_base_config())
  assert config_errors(defaults.get_base_config()) == []


# (overrides, substrings the single error line must contain)
ERROR_CASES: list[tuple[dict, tuple[str, ...]]] = [
    (dict(moe__top_k=9), ('moe.top_k=9', 'moe.num_experts=8')),
    (dict(moe__top_k=0), ('moe.top_k=0', '[1, moe.num_experts=8]')),
    (dict(pool__size=0), ('pool.size=0', '>= 1')),
    (dict(pool__size=3, pool__mixing='fixed'), ('pool.size=3', "pool.mixing='fixed'", 'only 2 of the 3')),
    (dict(pool__size=3, pool__mixing='fixed', pool__assignment='block'), ('pool.size=3', 'only 2 of the 3')),
    (dict(model__layer_plan='every_third'), ("model.layer_plan='every_third'", "'every_other'", 'D/M')),
    (dict(model__layer_plan='DMD'), ("model.layer_plan='DMD'", '3 letters', 'model.num_layers=4')),
    (dict(model__layer_plan='dmdm'), ("model.layer_plan='dmdm'", 'D/M')),
    (dict(model__d_model=130), ('model.d_model=130', 'model.num_heads=4')),
    (dict(mesh__data=4, mesh__expert=2, data__batch_size=12), ('data.batch_size=12', '8')),
    (dict(mesh__data=-1, mesh__expert=8, data__batch_size=12), ('data.batch_size=12', 'mesh.expert=8')),
    (dict(data__seq_len=256), ('data.seq_len=256', 'model.max_len=128')),
    (dict(moe__group_size=48), ('moe.group_size=48', 'data.seq_len=128')),
    (dict(moe__group_size=384), ('moe.group_size=384', 'multiple of data.seq_len=128')),
    (dict(moe__group_size=768), ('moe.group_size=768', 'divide data.batch_size * data.seq_len=2048')),
    (dict(moe__group_size=-1), ('moe.group_size=-1', '>= 0')),
    (dict(mesh__data=4, moe__group_size=1024), ('moe.group_size=1024', '2 routing groups', '= 4')),
    (dict(moe__capacity_factor_train=0.0), ('moe.capacity_factor_train=0.0', '> 0')),
    (dict(moe__capacity_factor_eval=-1.0), ('moe.capacity_factor_eval=-1.0', '> 0')),
    (dict(pool__mixing='soft'), ("pool.mixing='soft'", "'learned', 'fixed'")),
    (dict(pool__granularity='token'), ("pool.granularity='token'", "'layer', 'expert'")),
    (dict(pool__space='input'), ("pool.space='input'", "'weight', 'output'")),
    (dict(pool__init='orthogonal'), ("pool.init='orthogonal'", "'uniform', 'one_hot', 'random'")),
    (dict(pool__lr_multiplier=0.0), ('pool.lr_multiplier=0.0', 'a finite number > 0')),
    (dict(pool__random_init_std=-1.0), ('pool.random_init_std=-1.0',)),
    (dict(pool__target_reach=5.0, pool__lr_multiplier=2.0), ('pool.target_reach=5.0', 'set one of them')),
    (dict(pool__assignment='random'), ("pool.assignment='random'", "'modulo', 'block'")),
    (dict(moe__dispatch='scatter'), ("moe.dispatch='scatter'", "'gather', 'einsum'")),
    (dict(moe__slot_priority='lottery'), ("moe.slot_priority='lottery'", "'position', 'choice', 'bpr', 'random'")),
    (dict(model__dtype='float16'), ("model.dtype='float16'", "'float32', 'bfloat16'")),
    (dict(moe__lb_loss_coef=-0.01), ('moe.lb_loss_coef=-0.01', '>= 0')),
    (dict(moe__z_loss_coef=-1.0), ('moe.z_loss_coef=-1.0', '>= 0')),
    (dict(train__weight_decay=-0.1), ('train.weight_decay=-0.1', '>= 0')),
    (dict(pool__temperature=0.0), ('pool.temperature=0.0', '> 0')),
    (dict(train__steps=0), ('train.steps=0', '>= 1')),
    (dict(train__warmup_steps=601), ('train.warmup_steps=601', 'train.steps=600')),
    (dict(train__decay_steps=-5), ('train.decay_steps=-5', '>= 0')),
    (dict(train__decay_steps=40), ('train.warmup_steps=50', 'train.decay_steps=40')),
    (dict(mesh__expert=0), ('mesh.expert=0', '-1')),
    (dict(mesh__model=-2), ('mesh.model=-2', '-1')),
    (dict(mesh__data=-1, mesh__model=-1), ('mesh.data=-1', 'mesh.model=-1', 'at most one')),
    (dict(mesh__expert=3, data__batch_size=24), ('moe.num_experts=8', 'mesh.expert=3')),
    (dict(mesh__model=8), ('model.num_heads=4', 'mesh.model=8')),
    (dict(mesh__model=3, model__num_heads=3, model__d_model=96, model__d_ff=384, model__vocab_size=8194),
     ('model.vocab_size=8194', 'mesh.model=3')),
    (dict(train__learning_rate=0.0), ('train.learning_rate=0.0', '> 0')),
    (dict(train__b2=1.0), ('train.b2=1.0', '[0.0, 1.0)')),
    (dict(model__dropout_rate=1.0), ('model.dropout_rate=1.0', '[0.0, 1.0)')),
    (dict(data__vocabulary='byte', model__vocab_size=200), ('model.vocab_size=200', '259')),
    (dict(data__task='tfds_lm'), ("data.tfds_name=''", "data.task='tfds_lm'")),
    (dict(model__remat='full'), ("model.remat='full'", "must be one of ['block', 'dots', 'none']")),
    (dict(train__microbatches=0), ('train.microbatches=0', 'integer >= 1')),
    (dict(train__microbatches=3), ('data.batch_size=16', 'train.microbatches=3')),
    (dict(train__moment_dtype='float16'), ("train.moment_dtype='float16'", "'float32', 'bfloat16'")),
    (dict(eval__tasks='piqa2', eval__data_dir='x'), ("eval.tasks='piqa2'", "unknown task(s) ['piqa2']")),
]


def case_id(x) -> str:
  return ','.join(f'{k.replace("__", ".")}={v}' for k, v in x.items()) if isinstance(x, dict) else ''


@pytest.mark.parametrize('overrides,expected', ERROR_CASES, ids=case_id)
def test_validation_error_names_key_and_value(overrides, expected):
  c = base(**overrides)
  with pytest.raises(ValueError) as info:
    validate_config(c)
  message = str(info.value)
  lines = message.splitlines()[1:]
  assert len(lines) == 1, message
  for s in expected:
    assert s in lines[0], f'{s!r} not in {lines[0]!r}'


def test_mesh_fsdp_must_be_a_bool():
  """A config.json can carry any JSON value (ConfigDict itself refuses a str for the bool key)."""
  config = complete_config({'mesh': {'fsdp': 'yes'}})
  assert config_errors(config) == ["mesh.fsdp='yes': must be True or False (shard the non-expert training state "
                                   'over data x expert)']
  assert config_errors(complete_config({'mesh': {'fsdp': True}})) == []


def test_all_errors_collected_in_one_message():
  c = base(moe__top_k=9, pool__temperature=-1.0, train__steps=0, model__dtype='fp8')
  with pytest.raises(ValueError) as info:
    validate_config(c)
  message = str(info.value)
  assert message.startswith('invalid config (4 problems):')
  for key in ('moe.top_k=9', 'pool.temperature=-1.0', 'train.steps=0', "model.dtype='fp8'"):
    assert key in message
  assert len(message.splitlines()) == 5


def test_checks_from_formerly_separate_places_share_one_error():
  """model.remat (once models/remat.py only), eval.tasks and train.microbatches (once the trainer's preflight):
  all three in the one ValueError of the one validation pass."""
  c = base(model__remat='full', eval__tasks='piqa,piqa2', eval__data_dir='x', train__microbatches=3)
  with pytest.raises(ValueError) as info:
    validate_config(c)
  message = str(info.value)
  assert message.startswith('invalid config (3 problems):'), message
  for key in ("model.remat='full'", "eval.tasks='piqa,piqa2'", 'train.microbatches=3'):
    assert key in message, message


def test_validate_imports_neither_the_trainer_nor_the_evaluator():
  """The config pass (training/config_checks.py) is a leaf of the trainer and evaluator: no import cycle through
  them."""
  code = ('import sys; import samoe_jax.training.config_checks; '
          "print(sorted(m for m in ('samoe_jax.training.loop', 'samoe_jax.training.preflight', "
          "'samoe_jax.evaluation.runner', 'samoe_jax.evaluation.perplexity') if m in sys.modules))")
  env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''), JAX_PLATFORMS='cpu')
  done = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.strip().splitlines()[-1] == '[]', done.stdout


def test_manual_sharing_is_not_an_error():
  # Fixed mixing with 1 < P < number of MoE layers: adjacent layers share an entry.
  c = base(model__layer_plan='all', pool__size=2, pool__mixing='fixed')
  validate_config(c)
  c = base(model__layer_plan='all', pool__size=4, pool__mixing='fixed')  # standard MoE
  validate_config(c)
  c = base(pool__size=5, pool__mixing='learned')  # a learned pool may be larger than the MoE layer count
  validate_config(c)


def test_dense_model_ignores_moe_and_pool():
  c = base(model__layer_plan='none', moe__top_k=99, moe__num_experts=0, pool__size=0, pool__mixing='?',
           moe__dispatch='?', moe__group_size=7, mesh__expert=16)
  validate_config(c)
  c = base(model__layer_plan='DDDD', pool__temperature=0.0)
  validate_config(c)


def test_group_size_rules_accept_divisors_and_multiples():
  for g in (0, 32, 64, 128, 256, 2048):
    validate_config(base(moe__group_size=g))


def test_data_parallel_uses_data_times_expert():
  validate_config(base(mesh__data=2, mesh__expert=8))              # 16 | 16
  validate_config(base(mesh__data=-1, mesh__expert=8))
  with pytest.raises(ValueError, match='mesh.data=4 \\* mesh.expert=8 = 32'):
    validate_config(base(mesh__data=4, mesh__expert=8))


# ------------------------------------------------------------------------------------------------ layer plans
def plan(layer_plan: str, num_layers: int) -> list[int]:
  return moe_layer_indices(ml_collections.ConfigDict({'layer_plan': layer_plan, 'num_layers': num_layers}))


@pytest.mark.parametrize('layer_plan,num_layers,expected', [
    ('every_other', 4, [1, 3]),
    ('every_other', 24, list(range(1, 24, 2))),
    ('every_other', 5, [1, 3]),
    ('all', 3, [0, 1, 2]),
    ('none', 6, []),
    ('first_half', 6, [0, 1, 2]),
    ('second_half', 6, [3, 4, 5]),
    ('first_half', 5, [0, 1]),
    ('second_half', 5, [3, 4]),
    ('DMMD', 4, [1, 2]),
    ('MDDDDM', 6, [0, 5]),
    ('DDDD', 4, []),
])
def test_layer_plans(layer_plan, num_layers, expected):
  assert plan(layer_plan, num_layers) == expected


def test_layer_plan_errors_name_plan_and_allowed_values():
  with pytest.raises(ValueError, match="layer_plan='DMD'.*3 letters.*num_layers=4"):
    plan('DMD', 4)
  with pytest.raises(ValueError) as info:
    plan('alternate', 4)
  for s in ("'alternate'", "'every_other'", "'all'", "'none'", "'first_half'", "'second_half'", 'D/M', '4 letters'):
    assert s in str(info.value)


@pytest.mark.parametrize('n,p,assignment,expected', [
    (12, 12, 'modulo', list(range(12))),             # standard MoE: identity
    (12, 2, 'modulo', [0, 1] * 6),
    (12, 1, 'modulo', [0] * 12),
    (12, 3, 'block', [0] * 4 + [1] * 4 + [2] * 4),
    (12, 5, 'block', [0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4]),
    (4, 4, 'block', [0, 1, 2, 3]),
    (0, 2, 'modulo', []),
])
def test_pool_assignment(n, p, assignment, expected):
  assert pool_assignment(n, p, assignment) == expected


def test_pool_assignment_errors():
  with pytest.raises(ValueError, match="pool.assignment='nearest'"):
    pool_assignment(4, 2, 'nearest')
  with pytest.raises(ValueError, match='pool.size=0'):
    pool_assignment(4, 0, 'modulo')


def test_mixing_keys_are_checked_under_fixed_mixing_too():
  """A bad value of a learned-mixing key is a typo whichever scheme pool.mixing chooses (layers/mixing.py)."""
  c = base(pool__mixing='fixed', pool__size=2, pool__init='orthogonal')
  with pytest.raises(ValueError, match=r"pool.init='orthogonal'"):
    validate_config(c)
