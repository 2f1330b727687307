"""launch/tpu_vm.py: every subcommand's dry run prints the intended gcloud commands and runs nothing."""

from __future__ import annotations

import pathlib
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'launch' / 'tpu_vm.py'
BASE = ['--name=samoe-v4', '--zone=us-central2-b', '--project=proj', '--dry-run']


def dry_run(*args: str) -> list[list[str]]:
  done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60,
                        check=False, env={'PATH': '/nonexistent'})   # no gcloud reachable: a dry run needs none
  assert done.returncode == 0, done.stderr
  return [shlex.split(line) for line in done.stdout.splitlines()]


def test_create_single_host_pod_and_queued_spot():
  (cmd,) = dry_run('create', *BASE, '--accelerator=v4-8')
  assert cmd[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'samoe-v4']
  assert {'--zone=us-central2-b', '--project=proj', '--accelerator-type=v4-8',
          '--version=tpu-ubuntu2204-base'} <= set(cmd)
  (cmd,) = dry_run('create', *BASE, '--accelerator=v4-32', '--queued', '--spot')
  assert cmd[:5] == ['gcloud', 'compute', 'tpus', 'queued-resources', 'create']
  assert {'--node-id=samoe-v4', '--accelerator-type=v4-32', '--runtime-version=tpu-ubuntu2204-base',
          '--spot'} <= set(cmd)


def test_copy_setup_run_logs_delete():
  mkdir, scp = dry_run('copy', *BASE, '--source=/src')
  assert '--worker=all' in mkdir and scp[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp']
  assert '/src/samoe_jax' in scp and 'samoe-v4:~/samoe-jax/' in scp and '--worker=all' in scp
  (clone,) = dry_run('copy', *BASE, '--git_url=https://example.invalid/samoe-jax.git')
  assert 'git clone --depth=1 https://example.invalid/samoe-jax.git ~/samoe-jax' in clone[-1]
  (setup,) = dry_run('setup', *BASE)
  assert '--worker=all' in setup and 'pip install -q "jax[tpu]==0.10.2"' in setup[-1]
  (run,) = dry_run('run', *BASE, '--config=configs/gpt3_350m_samoe.py', '--workdir=gs://b/r', '--',
                   '--config.pool.size=4')
  assert '--worker=all' in run
  assert ('samoe_jax.train --config=configs/gpt3_350m_samoe.py --workdir=gs://b/r --config.pool.size=4'
          in run[-1])
  (logs,) = dry_run('logs', *BASE)
  assert '--worker=0' in logs and 'tail -n 100 -f ~/train.log' in logs[-1]
  (delete,) = dry_run('delete', *BASE)
  assert delete[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', 'samoe-v4'] and '--quiet' in delete


def test_run_refuses_a_local_workdir_and_help_works():
  done = subprocess.run([sys.executable, str(SCRIPT), 'run', *BASE, '--config=c.py', '--workdir=/tmp/x'],
                        capture_output=True, text=True, timeout=60, check=False)
  assert done.returncode != 0 and "--workdir='/tmp/x': use a gs:// path" in done.stderr
  for sub in ('create', 'copy', 'setup', 'run', 'logs', 'delete'):
    helped = subprocess.run([sys.executable, str(SCRIPT), sub, '--help'], capture_output=True, text=True,
                            timeout=60, check=False)
    assert helped.returncode == 0 and '--dry-run' in helped.stdout


GPU_SCRIPT = ROOT / 'launch' / 'gpu_node.py'


def test_gpu_node_dry_run_prints_setup_and_run_with_flags():
  setup = subprocess.run([sys.executable, str(GPU_SCRIPT), 'setup', '--dry-run'], capture_output=True, text=True,
                         timeout=60, check=False)
  assert setup.returncode == 0, setup.stderr
  lines = setup.stdout.splitlines()
  assert any('pip install -q -r requirements.txt' in l for l in lines)
  assert any("pip install -q 'jax[cuda12]==0.10.2'" in l for l in lines)
  run = subprocess.run([sys.executable, str(GPU_SCRIPT), 'run', '--dry-run', '--config=configs/gpt3_350m_samoe.py',
                        '--workdir=/data/r', '--expert=8', '--', '--config.pool.size=4'],
                       capture_output=True, text=True, timeout=60, check=False)
  assert run.returncode == 0, run.stderr
  (line,) = run.stdout.splitlines()
  words = shlex.split(line)
  assert 'XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true' in words
  assert words[words.index('-m') + 1] == 'samoe_jax.train'
  assert {'--config=configs/gpt3_350m_samoe.py', '--workdir=/data/r', '--config.mesh.data=-1',
          '--config.mesh.expert=8', '--config.pool.size=4'} <= set(words)
  bad = subprocess.run([sys.executable, str(GPU_SCRIPT), 'run', '--dry-run', '--config=c.py', '--workdir=w',
                        '--expert=0'], capture_output=True, text=True, timeout=60, check=False)
  assert bad.returncode != 0 and '--expert=0: must be >= 1' in bad.stderr


def test_gpu_node_bench_runs_one_process_per_model():
  done = subprocess.run([sys.executable, str(GPU_SCRIPT), 'bench', '--dry-run', '--out=/tmp/b', '--steps=5',
                         '--python=python3'], capture_output=True, text=True, timeout=60, check=False)
  assert done.returncode == 0, done.stderr
  mkdir, *runs = (shlex.split(line) for line in done.stdout.splitlines())
  assert mkdir == ['mkdir', '-p', '/tmp/b'] and len(runs) == 3
  for words, kind in zip(runs, ('dense', 'moe', 'samoe')):
    assert words[words.index('-m') - 1] == 'python3' and words[words.index('-m') + 1] == 'samoe_jax.bench'
    assert {'--preset=gpu', f'--only=gpu:{kind}', f'--json_out=/tmp/b/bench_gpu_{kind}.json', '--steps=5',
            '--repeats=3', 'XLA_PYTHON_CLIENT_MEM_FRACTION=0.90'} <= set(words)
  bad = subprocess.run([sys.executable, str(GPU_SCRIPT), 'bench', '--dry-run', '--steps=0'], capture_output=True,
                       text=True, timeout=60, check=False)
  assert bad.returncode != 0 and '--steps=0: must be >= 1' in bad.stderr


def test_gpu_node_suite_runs_the_budgeted_suite_then_the_bench_into_one_folder():
  done = subprocess.run([sys.executable, str(GPU_SCRIPT), 'suite', '--dry-run', '--out=/tmp/g', '--corpus_dir=/c',
                         '--python=python3'], capture_output=True, text=True, timeout=60, check=False)
  assert done.returncode == 0, done.stderr
  mkdir, suite, bench_mkdir, *benches = (shlex.split(line) for line in done.stdout.splitlines())
  assert mkdir == ['mkdir', '-p', '/tmp/g'] and bench_mkdir == ['mkdir', '-p', '/tmp/g/bench'] and len(benches) == 3
  assert suite[suite.index('-m') - 1] == 'python3' and suite[suite.index('-m') + 1] == 'samoe_jax.experiments.reproduce'
  assert {'--suite=h100', '--out=/tmp/g/suite', '--budget_s=420', '--corpus_dir=/c',
          'XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true'} <= set(suite)
  for words, kind in zip(benches, ('dense', 'moe', 'samoe')):
    assert f'--json_out=/tmp/g/bench/bench_gpu_{kind}.json' in words and '--steps=10' in words
  for bad_args, message in ((['--corpus_dir=/c', '--budget_s=0'], '--budget_s=0: must be > 0'), ([], '--corpus_dir')):
    bad = subprocess.run([sys.executable, str(GPU_SCRIPT), 'suite', '--dry-run', *bad_args], capture_output=True,
                         text=True, timeout=60, check=False)
    assert bad.returncode != 0 and message in bad.stderr
