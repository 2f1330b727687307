"""The one-off probe (seed 0, 400 steps, the calibration design) that chose calibration_every_other: why does the
top-1 MoE on every block lose to the dense model of equal active parameters?

  python docs/results/calibration_every_other/probe.py OUT CORPUS [NAME,NAME,...]   # train (resumes)
  python docs/results/calibration_every_other/probe.py OUT --table                   # probe.md / probe.json

Each variant changes one thing of the calibration's moe_e4 (or moe_e16); the runs are ordinary workdirs.
"""
import json
import os
import sys

from samoe_jax.experiments import calibration_design, runner, suites
from samoe_jax.experiments.suites import ConfigSpec, Suite


def moe(name: str, experts: int, what: str, **overrides) -> ConfigSpec:
  o = {'moe.num_experts': experts, 'pool.size': 4, 'pool.mixing': 'fixed', 'pool.assignment': 'modulo'}
  o.update(overrides)
  return ConfigSpec(name, what, 'sweep', o)


SPECS = (
    suites.dense(64, 2, name='dense'),
    moe('moe_e4', 4, 'top-1 E=4 on every block (the calibration config)'),
    moe('moe_e4_cap4', 4, 'capacity factor 4 in training and evaluation: nothing can be dropped',
        **{'moe.capacity_factor_train': 4.0, 'moe.capacity_factor_eval': 4.0}),
    moe('moe_e4_renorm', 4, "gate 'topk_softmax': the gate is 1, so the router gets no gradient from the LM loss",
        **{'moe.gate': 'topk_softmax'}),
    moe('moe_e1', 1, 'E=1: the MoE path with one expert (the dense FFN, routed)'),
    moe('moe_e16_eo', 16, 'top-1 E=16 on every other block (blocks 1, 3)',
        **{'model.layer_plan': 'every_other', 'pool.size': 2}),
)
SUITE = Suite('probe', 'why the all-blocks MoE loses', calibration_design.make_base(calibration_design.DESIGN), SPECS,
              seeds=1, steps=calibration_design.DESIGN.steps, evals=5, grad_stats=1, needs_corpus=True, budget='')


def table(out: str) -> None:
  rows = []
  for spec in SPECS:
    path = os.path.join(out, 'runs', f'{spec.name}_seed0', 'metrics.jsonl')
    if not os.path.exists(path):
      continue
    with open(path) as f:
      evals = [r for r in map(json.loads, f) if r.get('kind') == 'eval']
    if not evals or evals[-1]['step'] != SUITE.steps:
      continue
    rows.append({'config': spec.name, 'what': spec.label, 'overrides': dict(spec.overrides),
                 'curve': {r['step']: r['eval/cross_entropy'] for r in evals},
                 'eval_dropped': evals[-1].get('eval/moe/dropped_fraction')})
  dense = next(r for r in rows if r['config'] == 'dense')['curve']
  lines = ['| config | what | ' + ' | '.join(f'val. CE @ {s}' for s in dense) + ' | minus dense @ end |',
           '|---|---|' + '---:|' * (len(dense) + 1)]
  for r in rows:
    cells = ' | '.join(f'{r["curve"].get(s, float("nan")):.4f}' for s in dense)
    end = max(dense)
    lines.append(f'| `{r["config"]}` | {r["what"]} | {cells} | {r["curve"][end] - dense[end]:+.4f} |')
  with open(os.path.join(out, 'probe.json'), 'w') as f:
    json.dump(rows, f, indent=1)
  with open(os.path.join(out, 'probe.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print('\n'.join(lines))


if __name__ == '__main__':
  if sys.argv[2] == '--table':
    table(sys.argv[1])
  else:
    only = sys.argv[3].split(',') if len(sys.argv) > 3 else ()
    runner.train_runs(runner.plan(SUITE, sys.argv[1], sys.argv[2], 1, None, only), sys.argv[1])
