"""Writes launch/colab/samoe_quickstart.ipynb from the cells below (edit here, then rerun; the test checks they match).

  python launch/colab/make_notebook.py
"""

from __future__ import annotations

import os

import nbformat

NOTEBOOK = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'samoe_quickstart.ipynb')

CELLS = [
    ('markdown', """\
# samoe-jax quick start: train a tiny SaMoE on whatever accelerator this runtime has

SaMoE keeps one global *expert pool* of P MoE layers; every MoE layer of the model is a learned softmax mixture
of the pool. This notebook checks the devices, installs samoe-jax, trains the tiny SaMoE config (4 layers,
d_model 128, 8 experts top-2 on blocks 1 and 3, pool P = 2) on the embedded Shakespeare corpus, and plots the loss
and the learned mixing weights. On a Colab CPU runtime the default 600 steps take about 3 minutes; on a GPU or
TPU runtime, seconds. Nothing is downloaded except the package itself.

Runtime > Change runtime type picks CPU, GPU or TPU; the same cells run on all three."""),
    ('code', """\
# Parameters. The tests run this notebook on CPU with a few steps through these environment variables.
import os

STEPS = int(os.environ.get('SAMOE_NOTEBOOK_STEPS', '600'))
TASK = os.environ.get('SAMOE_NOTEBOOK_TASK', 'shakespeare')      # 'shakespeare_tiny' is a 20 KB slice
WORKDIR = os.environ.get('SAMOE_NOTEBOOK_WORKDIR') or (
    '/content/samoe_runs/tiny_samoe' if os.path.isdir('/content') else os.path.abspath('runs/colab_tiny_samoe'))
REPO_URL = os.environ.get('SAMOE_REPO_URL', '')  # git URL of samoe-jax (or your fork), used only to install it
print(f'steps={STEPS} task={TASK} workdir={WORKDIR}')"""),
    ('markdown', '## 1. Devices\n\nJAX sees the runtime\'s accelerator (TPU cores, a GPU) or falls back to the CPU.'),
    ('code', """\
import jax

print('jax', jax.__version__, '| backend:', jax.default_backend())
for device in jax.devices():
  print(' ', device)"""),
    ('markdown', """\
## 2. Install samoe-jax

Skipped when samoe-jax is already importable (a local Jupyter started from the repository's virtual
environment). On Colab, set `REPO_URL` above to the repository's git URL: pip installs the package and its
dependencies on top of Colab's preinstalled jax, which already matches the runtime's accelerator."""),
    ('code', """\
import importlib.util
import subprocess
import sys

if importlib.util.find_spec('samoe_jax') is None:
  if not REPO_URL:
    raise RuntimeError('samoe_jax is not installed here: set REPO_URL in the parameters cell to the git URL of '
                       'samoe-jax (e.g. https://github.com/<you>/samoe-jax) and rerun.')
  subprocess.check_call([sys.executable, '-m', 'pip', 'install', '--quiet', f'samoe-jax @ git+{REPO_URL}'])
import samoe_jax

print('samoe_jax from', os.path.dirname(samoe_jax.__file__))"""),
    ('markdown', """\
## 3. The tiny SaMoE config

`tiny('samoe')` is `configs/tiny_samoe.py`. Any key can be changed here, as `--config.section.key=value` does on
the command line; `validate_config` names every bad value before anything is built."""),
    ('code', """\
from samoe_jax.config.presets import tiny
from samoe_jax.training.config_checks import validate_config
from samoe_jax.models.model import LanguageModel

config = tiny('samoe')
config.data.task = TASK
config.train.steps = STEPS
config.train.warmup_steps = min(config.train.warmup_steps, STEPS // 5)
config.train.log_every = max(1, min(config.train.log_every, STEPS // 10))
config.train.eval_every = config.train.checkpoint_every = max(1, STEPS // 3)
validate_config(config)

summary = LanguageModel(config).param_summary()
for key in ('total', 'expert_pool', 'mixing_logits', 'materialized', 'active_per_token'):
  print(f'{key:>18}: {summary[key]:>12,}')"""),
    ('markdown', """\
## 4. Train

The trainer logs step, loss, tokens/s and ETA, evaluates on the validation split, and checkpoints into
`WORKDIR` (rerunning this cell resumes from the latest checkpoint; a finished run returns at once)."""),
    ('code', """\
from samoe_jax.training.loop import train

final = train(config, WORKDIR)
print(f"validation loss {final['eval/loss']:.3f}, perplexity {final['eval/perplexity']:.1f} after step {final['step']}")"""),
    ('markdown', '## 5. Loss curves'),
    ('code', """\
%matplotlib inline
import matplotlib.pyplot as plt
import numpy as np

from samoe_jax.training.metrics_writer import read_metrics

train_records, eval_records = read_metrics(WORKDIR, 'train'), read_metrics(WORKDIR, 'eval')
fig, ax = plt.subplots(figsize=(7, 4))
ax.plot([r['step'] for r in train_records], [r['cross_entropy'] for r in train_records], label='train cross-entropy')
ax.plot([r['step'] for r in eval_records], [r['eval/cross_entropy'] for r in eval_records], 'o-',
        label='validation cross-entropy')
ax.set_xlabel('step')
ax.set_ylabel('nats per token')
ax.grid(alpha=0.3)
ax.legend()
plt.show()
print(f"train cross-entropy: {train_records[0]['cross_entropy']:.3f} at step {train_records[0]['step']} -> "
      f"{train_records[-1]['cross_entropy']:.3f} at step {train_records[-1]['step']}")"""),
    ('markdown', """\
## 6. Mixing weights over the expert pool

Row l is MoE layer l's softmax(alpha_l / tau) over the P pool entries (docs/model.md). Training starts uniform
(alpha = 0); layers that specialise move towards one entry."""),
    ('code', """\
weights_LP = np.asarray(final['pool/mixing_weights'])
fig, ax = plt.subplots(figsize=(1.5 + 0.8 * weights_LP.shape[1], 1.2 + 0.6 * weights_LP.shape[0]))
image = ax.imshow(weights_LP, vmin=0.0, vmax=1.0, cmap='viridis', aspect='auto')
for (i, j), value in np.ndenumerate(weights_LP):
  ax.text(j, i, f'{value:.3f}', ha='center', va='center', color='w' if value < 0.6 else 'k')
ax.set_xticks(range(weights_LP.shape[1]))
ax.set_yticks(range(weights_LP.shape[0]), [f'block {b}' for b in LanguageModel(config).spec.moe_layers])
ax.set_xlabel('pool entry')
fig.colorbar(image)
plt.show()
print('mixing weights [MoE layer, pool entry]:')
print(np.array2string(weights_LP, precision=4))"""),
    ('markdown', """\
## Next

- `python -m samoe_jax.report --workdir=WORKDIR` writes `report.md` and the PNGs into the workdir.
- The other tiny configs (`tiny('moe')`, `tiny('dense')`, `tiny('tied')`) compare at matched compute.
- Multi-host TPU pods: `launch/tpu_vm.py`; a GPU node: `launch/gpu_node.py` (see `launch/README.md`)."""),
]


def build() -> nbformat.NotebookNode:
  nb = nbformat.v4.new_notebook()
  nb.metadata = {'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'},
                 'language_info': {'name': 'python'}, 'accelerator': 'GPU', 'colab': {'provenance': []}}
  nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == 'markdown' else nbformat.v4.new_code_cell(src)
              for kind, src in CELLS]
  for i, cell in enumerate(nb.cells):
    cell['id'] = f'cell-{i:02d}'
  return nb


def main() -> None:
  nbformat.write(build(), NOTEBOOK)
  print(NOTEBOOK)


if __name__ == '__main__':
  main()
