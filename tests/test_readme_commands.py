"""Every command of README.md, launch/README.md and docs/*.md works as written on a fresh clone, as far as can be
told without running it (tests/doc_command_checks.py): the program exists, its flags parse for real (config files,
--config.KEY overrides, gin files, subcommands), launchers pass their --dry-run, and every path it reads is shipped
or written by an earlier command. One probe process parses every command, a deliberately broken document's too.
"""

from __future__ import annotations

import pathlib
import re
import textwrap

import pytest

from tests import doc_command_checks
from tests.doc_commands import commands, is_placeholder

ROOT = pathlib.Path(__file__).resolve().parents[1]
# docs/architecture.md is left out: its untagged block is a call graph that starts with `python -m samoe_jax.train /`.
DOCUMENTS = ['README.md', 'launch/README.md'] + sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / 'docs').glob('*.md') if p.name != 'architecture.md')
BROKEN = textwrap.dedent("""\
    # A document with one mistake per command

    ```bash
    python -m samoe_jax.train --config=configs/tiny_samoe.py --workdir=/tmp/b1 --config.pool.sise=4
    python -m samoe_jax.evaluate --workdir=/tmp/b5 --eval_data_dir=tests/fixtures/eval --tasks=all
    python -m samoe_jax.train --config=configs/tiny_samoe.py --workdir=/tmp/b5
    python -m samoe_jax.compress uncurl --workdir=/tmp/b1 --task=piqa --groups=2 --out=/tmp/b2
    python -m samoe_jax.generate --workdir=/tmp/b1 \\
        --no_such_flag=1   # a comment
    python -m samoe_jax.no_such_module
    python launch/gpu_node.py run --config=configs/tiny_samoe.py --workdir=/tmp/b3 -- --config.moe.num_expert=4
    samoe-describe --config=configs/no_such.py
    make no_such_target
    python -m samoe_jax.finetune --workdir=/tmp/b4 --init_from=/tmp/b1 --task=piqa --eval_data_dir=data/evl
    python -m samoe_jax.report --workdir=/tmp/b1
    ```
    """)


@pytest.fixture(scope='module')
def problems() -> list[str]:
  documents = [(name, (ROOT / name).read_text()) for name in DOCUMENTS]
  return doc_command_checks.check(documents + [('broken.md', BROKEN)])


def test_markdown_commands_are_read_as_a_shell_reads_them():
  text = textwrap.dedent("""\
      Text with `python -m not.a.command` inline.

      ```bash
      # a comment line
      HF_HUB_OFFLINE=1 python -m a.b --x=1 \\
          --y='two words'   # trailing comment
      printf 'p\\n' > /tmp/prompts.txt && make demo
      python -m a.c --w=DIR [--step=N | --all] [--kind=x|y] [--tasks=auto | none] [--k=V ...]
      ```

      ```
      $ python -m a.d --z=3
      output line, not a command
      ```

          python -m a.e --v=1 \\
              --u=2

      ```python
      python = 1
      ```
      """)
  found = commands('doc.md', text)
  assert [(c.line, c.argv) for c in found] == [
      (5, ('python', '-m', 'a.b', '--x=1', '--y=two words')),
      (7, ('printf', 'p\\n')),
      (7, ('make', 'demo')),
      (8, ('python', '-m', 'a.c', '--w=DIR', '--step=N', '--all', '--kind=x', '--tasks=auto', '--k=V')),
      (12, ('python', '-m', 'a.d', '--z=3')),
      (16, ('python', '-m', 'a.e', '--v=1', '--u=2'))]
  assert found[1].writes == ('/tmp/prompts.txt',)
  assert found[3].optional == {4, 5, 6, 7, 8} and not found[0].optional
  assert [is_placeholder(v) for v in ('RUN', 'gs://BUCKET/x', 'configs/NAME.py', 'N', '...', 'runs/tiny', 'v4-8')] == [
      True, True, True, True, True, False, False]


def test_readme_commands_work_on_a_fresh_clone(problems):
  readme = [p for p in problems if p.startswith(('README.md:', 'launch/README.md:'))]
  assert not readme, '\n'.join(readme)


def test_docs_commands_work_on_a_fresh_clone(problems):
  docs = [p for p in problems if p.startswith('docs/')]
  assert not docs, '\n'.join(docs)


def test_each_broken_command_is_named_with_its_line(problems):
  broken = '\n'.join(p for p in problems if p.startswith('broken.md:'))
  expected = {
      4: "config.pool.sise: the config has no key 'sise'; did you mean 'size'?",
      5: '--workdir=/tmp/b5: not in the repository, and no earlier command writes it',
      7: '--groups: not a flag of `uncurl`',
      8: "Unknown command line flag 'no_such_flag'",
      10: 'no module samoe_jax.no_such_module',
      11: "(printed by its dry run) python -m samoe_jax.train --config=configs/tiny_samoe.py --workdir=/tmp/b3",
      12: 'config file configs/no_such.py could not be loaded',
      13: 'no make target no_such_target in the Makefile',
      14: '--eval_data_dir=data/evl: not in the repository, and no earlier command writes it'}
  for line, message in expected.items():
    assert any(p.startswith(f'broken.md:{line}: ') and message in p for p in broken.splitlines()), (line, broken)
  assert "no key 'num_expert'" in next(p for p in broken.splitlines() if p.startswith('broken.md:11: '))
  lines = {int(p.split(':')[1]) for p in broken.splitlines()}
  assert lines == set(expected), broken   # the train of line 6 and the report of line 15 are right


def test_console_scripts_named_in_the_docs_exist():
  """Inline `samoe-...` names (the console scripts of pip install -e .) are scripts of pyproject.toml."""
  scripts = doc_command_checks.Checker().scripts
  named = {(name, m) for name in DOCUMENTS for m in re.findall(r'`(samoe-[a-z-]+)', (ROOT / name).read_text())}
  assert named and not {(name, m) for name, m in named if m not in scripts}
