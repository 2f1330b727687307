r"""Text generation from a trained run's checkpoint (docs/generation.md), like nanoGPT's sample.py.

  python -m samoe_jax.generate --workdir=runs/tiny_samoe --prompt='ROMEO:' [--prompt=... | --prompt_file=FILE] \
      [--step=N] [--temperature=0.8] [--top_k=40] [--top_p=0.95] [--max_new_tokens=64] [--num_samples=3] \
      [--stop='\n\n' ...] [--seed=0] [--batch_size=8] [--output_jsonl=samples.jsonl]

Restores only the parameters of the latest checkpoint (or --step) of WORKDIR with the run's own config.json and
vocabulary (evaluation/backend.py: load_run), decodes with the KV-cache decoder (models/decoding.py) and the
sampler of models/sampling.py: temperature (0 = greedy), then top-k, then top-p. Every continuation stops at EOS,
at the first --stop string, or after --max_new_tokens tokens. Prints each prompt and its continuation to stdout;
--output_jsonl also writes one JSON object per sample.

--prompt_file holds one prompt per line (empty lines skipped). In --prompt, --stop and the file's lines the escapes
\n, \t and \\ stand for a newline, a tab and a backslash.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from absl import app, flags, logging

from samoe_jax import cli
from samoe_jax.evaluation.backend import generate_texts, load_run
from samoe_jax.models.sampling import SamplingSettings

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

PROG = 'samoe_jax.generate'
_ESCAPES = {'n': '\n', 't': '\t', '\\': '\\'}


def unescape(text: str) -> str:
  r"""\n, \t and \\ -> newline, tab, backslash; any other backslash stays as it is."""
  out, i = [], 0
  while i < len(text):
    if text[i] == '\\' and i + 1 < len(text) and text[i + 1] in _ESCAPES:
      out.append(_ESCAPES[text[i + 1]])
      i += 2
    else:
      out.append(text[i])
      i += 1
  return ''.join(out)


@dataclasses.dataclass(frozen=True)
class GenerateOptions:
  """What one `samoe_jax.generate` command asks for (its flags); max_new_tokens None: min(64, max_len // 2)."""
  workdir: str
  prompts: tuple[str, ...] = ()
  prompt_file: str = ''
  step: int | None = None
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  max_new_tokens: int | None = None
  seed: int = 0
  batch_size: int = 8
  stop: tuple[str, ...] = ()
  num_samples: int = 1
  output_jsonl: str = ''

  def sampling(self) -> Any:
    return SamplingSettings(self.temperature, self.top_k, self.top_p)

  def check(self) -> None:
    """The checks that need no model: ValueError naming the flag, its value and what is allowed."""
    workdir = self.workdir
    if not workdir or not os.path.isdir(workdir):
      raise ValueError(f'--workdir={workdir!r} is not a directory: give a run directory written by samoe_jax.train')
    if not os.path.isfile(os.path.join(workdir, 'config.json')):
      raise ValueError(f'--workdir={workdir!r} has no config.json: it is not a run directory written by '
                       'samoe_jax.train')
    if not self.prompts and not self.prompt_file:
      raise ValueError('no prompt: give --prompt=TEXT (repeatable) or --prompt_file=FILE (one prompt per line)')
    if self.prompt_file and not os.path.isfile(self.prompt_file):
      raise ValueError(f'--prompt_file={self.prompt_file!r} does not exist (one prompt per line)')
    try:
      self.sampling().check()
    except ValueError as err:
      raise ValueError(f'--{err}') from None
    for name in ('num_samples', 'batch_size'):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'--{name}={value!r} must be an int >= 1')
    if self.max_new_tokens is not None and (not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1):
      raise ValueError(f'--max_new_tokens={self.max_new_tokens!r} must be an int >= 1')
    if self.step is not None and (not isinstance(self.step, int) or self.step < 0):
      raise ValueError(f'--step={self.step!r} must be a checkpoint step (an int >= 0)')
    if any(not s for s in self.stop):
      raise ValueError("--stop='': a stop string must be non-empty")
    out_dir = os.path.dirname(os.path.abspath(self.output_jsonl)) if self.output_jsonl else ''
    if out_dir and not os.path.isdir(out_dir):
      raise ValueError(f'--output_jsonl={self.output_jsonl!r}: its directory {out_dir} does not exist')


def read_prompts(options: GenerateOptions) -> list[str]:
  """The --prompt texts, then the lines of --prompt_file (empty lines skipped), escapes decoded."""
  texts = list(options.prompts)
  if options.prompt_file:
    with open(options.prompt_file, encoding='utf-8') as f:
      texts += [line.rstrip('\r\n') for line in f if line.rstrip('\r\n')]
    if not texts:
      raise ValueError(f'--prompt_file={options.prompt_file!r} holds no prompt (one prompt per line)')
  return [unescape(t) for t in texts]


def _max_new_tokens(options: GenerateOptions, max_len: int) -> int:
  new = options.max_new_tokens if options.max_new_tokens is not None else min(64, max(1, max_len // 2))
  if not 1 <= new <= max_len - 1:
    raise ValueError(f'--max_new_tokens={new} must be in [1, {max_len - 1}]: the model sees model.max_len='
                     f'{max_len} positions and the prompt keeps at least one of them')
  return new


def generate_records(options: GenerateOptions) -> list[dict[str, Any]]:
  """One record per (prompt, sample): the prompt, its continuation and how it was made (the JSONL rows)."""
  options.check()
  texts = read_prompts(options)
  stops = [unescape(s) for s in options.stop]
  checkpoint = 'latest' if options.step is None else str(options.step)
  run = load_run(options.workdir, checkpoint=checkpoint, flag='--step')
  spec = run.model.spec.model
  sampling = options.sampling()
  try:
    sampling.check(spec.vocab_size)
  except ValueError as err:
    raise ValueError(f'--{err}') from None
  new = _max_new_tokens(options, spec.max_len)
  prompts = [run.tokenizer.encode(t) for t in texts]
  for i, (text, ids) in enumerate(zip(texts, prompts)):
    if not ids:
      raise ValueError(f'prompt {i} ({text!r}) is empty after encoding with the run\'s {run.config.data.vocabulary!r} '
                       'vocabulary: give some text')
    if len(ids) > spec.max_len - new:
      logging.warning('prompt %d has %d tokens: only its last %d are read (model.max_len=%d leaves room for '
                      '--max_new_tokens=%d)', i, len(ids), spec.max_len - new, spec.max_len, new)
  rows = [(p, s) for p in range(len(prompts)) for s in range(options.num_samples)]
  continuations = generate_texts(run.model, run.params, run.tokenizer, [prompts[p] for p, _ in rows],
                                 max_new_tokens=new, until=stops, sampling=sampling, rng=options.seed,
                                 batch_size=options.batch_size)
  return [{'prompt_index': p, 'sample': s, 'prompt': texts[p], 'continuation': c.text, 'new_tokens': c.new_tokens,
           'finish': c.finish, 'step': run.step, 'seed': options.seed, 'temperature': sampling.temperature,
           'top_k': sampling.top_k, 'top_p': sampling.top_p} for (p, s), c in zip(rows, continuations)]


def format_record(record: dict[str, Any], num_prompts: int, num_samples: int) -> str:
  """A record as text: a header line, then PROMPT: and CONTINUATION: (each as written, newlines included)."""
  header = (f"=== prompt {record['prompt_index'] + 1}/{num_prompts}, sample {record['sample'] + 1}/{num_samples} "
            f"(step {record['step']}; {record['new_tokens']} new tokens; finish: {record['finish']}) ===")
  return f"{header}\nPROMPT: {record['prompt']}\nCONTINUATION: {record['continuation']}\n"


def write_outputs(records: Sequence[dict[str, Any]], options: GenerateOptions) -> None:
  """Prints every record to stdout; writes --output_jsonl (one JSON object a line) when given."""
  num_prompts = len({r['prompt_index'] for r in records})
  for record in records:
    print(format_record(record, num_prompts, options.num_samples), flush=True)
  if options.output_jsonl:
    with open(options.output_jsonl, 'w', encoding='utf-8') as f:
      for record in records:
        f.write(json.dumps(record, ensure_ascii=False) + '\n')
    logging.info('wrote %d samples to %s', len(records), options.output_jsonl)


def options_from_flags(values: flags.FlagValues = flags.FLAGS) -> GenerateOptions:
  """The options of parsed flags (see `define_flags`)."""
  return GenerateOptions(
      workdir=values.workdir, prompts=tuple(values.prompt or ()), prompt_file=values.prompt_file or '',
      step=values.step, temperature=values.temperature, top_k=values.top_k, top_p=values.top_p,
      max_new_tokens=values.max_new_tokens, seed=values.seed, batch_size=values.batch_size,
      stop=tuple(values.stop or ()), num_samples=values.num_samples, output_jsonl=values.output_jsonl or '')


def run(options: GenerateOptions) -> list[dict[str, Any]]:
  """The command's work: checks, generates, prints (first process only), writes --output_jsonl."""
  options.check()
  import jax  # pylint: disable=g-import-not-at-top  (after the checks: heavy)
  records = generate_records(options)
  if jax.process_index() == 0:
    write_outputs(records, options)
  return records


def _run(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  options = options_from_flags()
  options.check()   # before the heavy imports
  run(options)


def define_flags(values: flags.FlagValues = flags.FLAGS) -> None:
  """The command's flags, defined on `values`."""
  def define(kind, name, default, help_text, **kw):
    getattr(flags, f'DEFINE_{kind}')(name, default, help_text, flag_values=values, **kw)
  define('string', 'workdir', None, 'A samoe_jax.train run directory (config.json + checkpoints/).', required=True)
  define('multi_string', 'prompt', None, r'A prompt (repeatable); \n, \t and \\ are unescaped.')
  define('string', 'prompt_file', '', 'A text file of prompts, one a line (empty lines skipped; escapes as in '
         '--prompt).')
  define('integer', 'step', None, 'The checkpoint step; default: the latest intact checkpoint.')
  define('float', 'temperature', 1.0, 'Softmax temperature; 0 = greedy decoding.')
  define('integer', 'top_k', 0, 'Sample from the k most likely tokens only; 0 = off.')
  define('float', 'top_p', 1.0, 'Nucleus sampling: the smallest set of tokens with probability >= top_p; 1 = off.')
  define('integer', 'max_new_tokens', None, 'Tokens to generate per sample, at most model.max_len - 1; default: '
         'min(64, model.max_len // 2).')
  define('integer', 'seed', 0, 'Sampling seed: the same seed gives the same samples.')
  define('integer', 'batch_size', 8, 'Sequences decoded together.')
  define('multi_string', 'stop', None, r'A stop string (repeatable): the continuation ends before it; escapes as '
         r'in --prompt, e.g. --stop="\n\n". EOS always stops.')
  define('integer', 'num_samples', 1, 'Samples per prompt.')
  define('string', 'output_jsonl', '', 'Also write one JSON object per sample to this file.')


def main(argv: Sequence[str] | None = None) -> None:
  """The command (python -m, a console script): defines its flags here, not at import (every command module
  imports in one process), and runs through cli.run_app."""
  define_flags()
  cli.run_app(PROG, _run, sys.argv if argv is None else list(argv))


if __name__ == '__main__':
  sys.exit(main())
