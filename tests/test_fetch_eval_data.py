"""`python -m samoe_jax.evaluation.fetch_data` against a local file:// mirror laid out like the hub, and the
lm-eval task files of `samoe_jax.evaluation.lm_eval_offline` over what it wrote. Nothing here uses the network.

The mirror holds, for every downloadable task, the fixture rows (tests/fixtures/eval, already in the hub's field
names) in the source's format (parquet or JSON lines) at `datasets/<repo>/resolve/<revision>/<path>`.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tomllib

import pytest

from samoe_jax.evaluation import data_convert, data_sources, fetch_data, lm_eval_offline
from samoe_jax.evaluation.data_sources import PARQUET, SOURCES
from samoe_jax.evaluation.tasks.registry import TASK_NAMES, get_task

os.environ['HF_DATASETS_OFFLINE'] = '1'
os.environ['HF_HUB_OFFLINE'] = '1'
os.environ['DISABLE_MULTIPROC'] = '1'

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = ROOT / 'tests' / 'fixtures' / 'eval'


def fixture_rows(task: str, split: str) -> list[dict]:
  return [json.loads(line) for line in (FIXTURES / task / f'{split}.jsonl').read_text().splitlines() if line.strip()]


def mirror_path(mirror: pathlib.Path, task: str, split: str) -> pathlib.Path:
  source = SOURCES[task]
  return mirror / 'datasets' / source.repo / 'resolve' / source.revision / source.files[split].path


def sha256(path: pathlib.Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def run(capsys, *args: str) -> tuple[int, str, str]:
  """(exit code, stdout, stderr) of the command run in this process."""
  capsys.readouterr()
  try:
    code = fetch_data.main(list(args))
  except SystemExit as exit_:
    code = exit_.code
  out, err = capsys.readouterr()
  return code, out, err


@pytest.fixture(scope='module')
def mirror(tmp_path_factory) -> pathlib.Path:
  pytest.importorskip('pyarrow')
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp('mirror')
  for task, source in SOURCES.items():
    for split in source.files:
      path = mirror_path(root, task, split)
      path.parent.mkdir(parents=True, exist_ok=True)
      if source.fmt == PARQUET:
        pq.write_table(pa.Table.from_pylist(fixture_rows(task, split)), path)
      else:
        data_convert.write_json_lines(fixture_rows(task, split), str(path))
  return root


@pytest.fixture(scope='module')
def fetched(mirror, tmp_path_factory) -> pathlib.Path:
  """Every downloadable task fetched from the mirror."""
  out = tmp_path_factory.mktemp('fetched') / 'eval'
  fetch_data.fetch(str(out), fetch_data.select_tasks('all'), base_url=mirror.as_uri())
  return out


def copy_of(fetched: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
  out = tmp_path / 'eval'
  shutil.copytree(fetched, out)
  return out


# ----------------------------------------------------------------------------------------------- the table


def test_the_table_covers_every_split_the_evaluator_reads():
  data_sources.check_table({t: get_task(t, '.').splits for t in TASK_NAMES})
  assert set(SOURCES) | set(data_sources.NOT_DOWNLOADABLE) == set(TASK_NAMES)
  for task, source in SOURCES.items():
    branch = any(f.provenance == data_sources.BRANCH for f in source.files.values())
    assert branch or re.fullmatch(r'[0-9a-f]{40}', source.revision), task   # a commit, unless marked a branch
  assert (SOURCES['piqa'].url('validation') == 'https://huggingface.co/datasets/baber/piqa/resolve/'
          '142f6d7367fd9877f0fb3b5734ea6a545f54cdd1/data/validation-00000-of-00001.parquet')


# ------------------------------------------------------------------------------------------ fetching


def test_fetch_writes_the_layout_the_evaluator_reads(fetched, mirror):
  manifest = json.loads((fetched / 'manifest.json').read_text())['files']
  assert len(manifest) == sum(len(s.files) for s in SOURCES.values()) == 22
  for task, source in SOURCES.items():
    loaded = get_task(task, str(fetched))          # the evaluator's own reading, gold labels checked
    for split in source.files:
      assert len(loaded.docs(split)) == len(fixture_rows(task, split)), (task, split)
      entry = manifest[f'{task}/{split}.jsonl']
      assert entry['sha256'] == sha256(fetched / task / f'{split}.jsonl') and entry['rows'] == len(loaded.docs(split))
      assert entry['source']['sha256'] == sha256(mirror_path(mirror, task, split))        # as downloaded
      assert entry['source']['url'] == source.url(split, mirror.as_uri())
  assert get_task('piqa', str(fetched)).raw_docs('validation')[0] == fixture_rows('piqa', 'validation')[0]
  arc = get_task('arc_easy', str(fetched)).raw_docs('test')[0]
  assert arc['choices']['label'] == ['A', 'B', 'C', 'D'] and arc['answerKey'] == 'A'       # a parquet struct
  assert get_task('hellaswag', str(fetched)).docs('validation')[0]['gold'] == int(
      fixture_rows('hellaswag', 'validation')[0]['label'])
  assert not (fetched / 'storycloze').exists()
  assert not [p for p in fetched.iterdir() if p.name.startswith('.fetch-')]            # the staging is gone


def test_a_second_run_is_a_no_op_that_verifies(fetched, mirror, capsys):
  before = {p: p.stat().st_mtime_ns for p in fetched.rglob('*')}
  code, out, err = run(capsys, f'--out={fetched}', f'--base_url={mirror.as_uri()}')
  assert code == 0, err
  assert out.count(': verified (') == 22 and '22 file(s) verified, 0 fetched' in out
  assert {p: p.stat().st_mtime_ns for p in fetched.rglob('*')} == before


def test_a_changed_file_is_refused_then_replaced_with_overwrite(fetched, mirror, capsys, tmp_path):
  out = copy_of(fetched, tmp_path)
  target = out / 'piqa' / 'validation.jsonl'
  original = target.read_bytes()
  target.write_bytes(original.replace(b'"label": 0', b'"label": 1', 1))
  code, _, err = run(capsys, f'--out={out}', '--tasks=piqa', f'--base_url={mirror.as_uri()}')
  assert code == 1 and len(err.strip().splitlines()) == 1
  assert f'{target} changed since it was fetched' in err and '--overwrite' in err
  code, stdout, err = run(capsys, f'--out={out}', '--tasks=piqa', f'--base_url={mirror.as_uri()}', '--overwrite')
  assert code == 0, err
  assert target.read_bytes() == original and '1 file(s) verified, 1 fetched' in stdout


def test_files_not_written_by_the_command_are_refused(mirror, capsys, tmp_path):
  out = tmp_path / 'eval'
  shutil.copytree(FIXTURES / 'boolq', out / 'boolq')            # e.g. the fixtures or an earlier export
  code, _, err = run(capsys, f'--out={out}', '--tasks=boolq', f'--base_url={mirror.as_uri()}')
  assert code == 1 and 'refusing to replace 2 file(s)' in err and 'does not list it' in err
  assert (out / 'boolq' / 'train.jsonl').read_bytes() == (FIXTURES / 'boolq' / 'train.jsonl').read_bytes()


def test_unknown_and_undownloadable_tasks_are_one_line_each(capsys, tmp_path):
  code, _, err = run(capsys, f'--out={tmp_path}', '--tasks=piqa,piqa2')
  assert code == 1 and err.startswith("samoe_jax.evaluation.fetch_data: error: --tasks: unknown task(s) ['piqa2']")
  assert len(err.strip().splitlines()) == 1
  code, _, err = run(capsys, f'--out={tmp_path}', '--tasks=storycloze')
  assert code == 1 and 'storycloze: StoryCloze 2016 is not downloadable' in err
  assert not list(tmp_path.iterdir())


def test_a_missing_remote_file_is_one_line_naming_the_url(mirror, capsys, tmp_path):
  partial = tmp_path / 'mirror'
  shutil.copytree(mirror, partial)
  mirror_path(partial, 'piqa', 'train').unlink()
  out = tmp_path / 'eval'
  code, _, err = run(capsys, f'--out={out}', '--tasks=boolq,piqa', f'--base_url={partial.as_uri()}')
  url = SOURCES['piqa'].url('train', partial.as_uri())
  assert code == 1 and err.strip() == f'samoe_jax.evaluation.fetch_data: error: could not download {url}: ' \
                                      'No such file or directory'
  manifest = json.loads((out / 'manifest.json').read_text())['files']
  assert sorted(manifest) == ['boolq/train.jsonl', 'boolq/validation.jsonl', 'piqa/validation.jsonl']
  assert not (out / 'piqa' / 'train.jsonl').exists()
  assert not [p for p in out.iterdir() if p.name.startswith('.fetch-')]


def test_a_changed_source_is_detected(fetched, mirror, capsys, tmp_path):
  """A file listed in the manifest but removed is fetched again; new bytes at the same pin are refused."""
  changed = tmp_path / 'mirror'
  shutil.copytree(mirror, changed)
  source = mirror_path(changed, 'lambada_openai', 'test')
  source.write_text(source.read_text() + '{"text": "one more line of text"}\n')
  out = copy_of(fetched, tmp_path)
  (out / 'lambada_openai' / 'test.jsonl').unlink()
  code, _, err = run(capsys, f'--out={out}', '--tasks=lambada_openai', f'--base_url={changed.as_uri()}')
  assert code == 1 and 'the source changed' in err and not (out / 'lambada_openai' / 'test.jsonl').exists()
  code, _, err = run(capsys, f'--out={out}', '--tasks=lambada_openai', f'--base_url={mirror.as_uri()}')
  assert code == 0, err                                          # the original bytes again


def test_expect_manifest_compares_with_another_run(fetched, mirror, capsys, tmp_path):
  expected = fetched / 'manifest.json'
  code, _, err = run(capsys, f'--out={tmp_path / "a"}', '--tasks=copa', f'--base_url={mirror.as_uri()}',
                     f'--expect_manifest={expected}')
  assert code == 0, err
  data = json.loads(expected.read_text())
  data['files']['copa/train.jsonl']['source']['sha256'] = '0' * 64
  other = tmp_path / 'other.json'
  other.write_text(json.dumps(data))
  code, _, err = run(capsys, f'--out={tmp_path / "a"}', '--tasks=copa', f'--expect_manifest={other}')
  assert code == 1 and 'copa/train.jsonl: the downloaded file has SHA-256' in err and f'records {"0" * 64}' in err


def test_parquet_without_pyarrow_names_the_install(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, 'pyarrow', None)
  monkeypatch.setitem(sys.modules, 'pyarrow.parquet', None)
  with pytest.raises(ValueError, match='reading parquet needs pyarrow, which is not installed: pip install pyarrow'):
    data_convert.read_rows(str(tmp_path / 'x.parquet'), PARQUET)


def test_the_command_line_entry_points():
  scripts = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']['scripts']
  assert scripts['samoe-fetch-eval-data'] == 'samoe_jax.evaluation.fetch_data:main'
  assert scripts['samoe-lm-eval-tasks'] == 'samoe_jax.evaluation.lm_eval_offline:main'
  command = [sys.executable, '-m', 'samoe_jax.evaluation.fetch_data']
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  result = subprocess.run([*command, '--list'], capture_output=True, text=True, cwd=ROOT, timeout=120, env=env)
  assert result.returncode == 0, result.stderr
  assert SOURCES['race'].url('test') in result.stdout and 'storycloze      (not downloadable' in result.stdout
  result = subprocess.run([*command, '--out=/x', '--base_url=ftp://a'], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, env=env)
  assert result.returncode == 1 and result.stderr.strip() == (
      "samoe_jax.evaluation.fetch_data: error: --base_url='ftp://a': use an https://, http:// or file:// URL")


# ------------------------------------------------------------------------------------ the lm-eval bridge


def test_lm_eval_task_files_read_the_fetched_data(fetched, tmp_path):
  """The shipped recipe over the fetched directory: the harness's own tasks, loaded offline from its files."""
  from lm_eval.tasks import TaskManager  # pylint: disable=g-import-not-at-top
  yamls = tmp_path / 'yamls'
  written = lm_eval_offline.write_task_files(str(fetched), str(yamls), ['piqa', 'lambada_openai'],
                                             cache_dir=str(tmp_path / 'hf_cache'))
  assert [os.path.basename(p) for p in written] == ['piqa.yaml', 'lambada_openai.yaml']
  assert (yamls / 'piqa.yaml').read_text().startswith(lm_eval_offline.HEADER)
  tasks = TaskManager(include_path=str(yamls), include_defaults=False).load(['piqa', 'lambada_openai'])['tasks']
  assert len(list(tasks['piqa'].eval_docs)) == len(fixture_rows('piqa', 'validation'))
  assert len(list(tasks['lambada_openai'].eval_docs)) == len(fixture_rows('lambada_openai', 'test'))
  assert tasks['piqa'].config.doc_to_text == 'Question: {{goal}}\nAnswer:'     # the harness's own prompt
  lm_eval_offline.write_task_files(str(fetched), str(yamls), ['piqa'])       # its own files are rewritten
  (yamls / 'mine.yaml').write_text('task: piqa\n')
  with pytest.raises(FileExistsError, match='was not written by'):
    lm_eval_offline.write_yaml({'task': 'x'}, str(yamls / 'mine.yaml'))
  with pytest.raises(FileNotFoundError, match='--tasks=storycloze'):
    lm_eval_offline.write_task_files(str(fetched), str(yamls), ['storycloze'])
