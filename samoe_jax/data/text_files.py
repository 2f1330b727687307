"""data.task='text_files': your own .txt / .jsonl files (optionally .gz) as a seqio task held in memory.

Which files (comma-separated globs; give exactly one of the two):
  data.train_files [+ data.validation_files]   the splits file by file ('validation' is empty without the latter)
  data.files + data.validation_fraction        one set of files, split document by document by a stable hash:
      a document goes to 'validation' when int.from_bytes(sha256(utf-8 text)[:8], 'little') / 2**64 <
      validation_fraction. The split depends on the text only (not on file names or order): identical documents
      always land on the same side, and the two splits are disjoint.

Documents: every JSONL line is one (its data.text_key field); a .txt file is cut by data.txt_documents:
'paragraph' (runs of non-blank lines, as the embedded corpus is; lines lose trailing whitespace), 'line' (every
non-blank line) or 'file' (the whole file, surrounding blank lines and trailing whitespace removed). Line ends are
normalised to '\\n', a leading UTF-8 BOM is dropped, empty documents are skipped. Files are read in the sorted
order of their resolved paths. in_memory.py tokenizes the documents (the rows of the seqio task in tasks.py).

Everything here is pure Python (no TensorFlow): `check_text_files` reads, decodes and parses the files without
tokenizing them, so the trainer can refuse a bad corpus before it writes or compiles anything. `load_rows` keeps
the tokenized rows of a split in data.cache_dir (.npy) under a sha256 of everything that determines them.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import hashlib
import json
import math
import os
import tempfile
import time
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
from absl import logging

from samoe_jax.config.checks import Problems, register
from samoe_jax.data import documents
from samoe_jax.data import vocabularies

TASK = 'text_files'
SPLITS = ('train', 'validation')
TXT_DOCUMENTS = ('paragraph', 'line', 'file')
FORMATS = {'.txt': 'txt', '.txt.gz': 'txt', '.jsonl': 'jsonl', '.jsonl.gz': 'jsonl'}
# Bump when the documents or rows made from the same inputs change: old cache files are then never read.
# 2: rows made in plain Python (in_memory.py; SentencePiece through the sentencepiece package, whose segmentation
#    differs from tensorflow-text's, which version 1 used, on about 1 token in 30,000 of the experiment corpus).
FORMAT_VERSION = 2
# The data keys of this task with their defaults (configs written before the task existed lack them).
DEFAULTS = {'train_files': '', 'validation_files': '', 'files': '', 'validation_fraction': 0.01,
            'txt_documents': 'paragraph', 'cache_dir': '', 'text_key': 'text'}


def _setting(data_cfg: Any, key: str) -> Any:
  return data_cfg.get(key, DEFAULTS[key]) if hasattr(data_cfg, 'get') else getattr(data_cfg, key, DEFAULTS[key])


def _setting_or(data_cfg: Any, key: str) -> Any:
  return data_cfg.get(key) if hasattr(data_cfg, 'get') else getattr(data_cfg, key, None)


def _is_number(x: Any) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool)


# ---------------------------------------------------------------------------------------------- settings


def setting_errors(data_cfg: Any) -> list[tuple[str, Any, str]]:
  """(key under data., value, what is allowed) for every bad text_files setting; reads no file."""
  errors = []
  values = {key: _setting(data_cfg, key) for key in DEFAULTS}
  for key in ('train_files', 'validation_files', 'files', 'cache_dir'):
    if not isinstance(values[key], str):
      errors.append((key, values[key], 'must be a string (comma-separated globs for the *_files keys)'))
  if errors:
    return errors
  train, validation, files = values['train_files'].strip(), values['validation_files'].strip(), values['files'].strip()
  one_of = ("data.task='text_files' needs exactly one of data.train_files (with data.validation_files) or "
            'data.files (split by data.validation_fraction)')
  if train and files:
    errors.append(('files', values['files'], f'given together with data.train_files={values["train_files"]!r}: '
                   + one_of))
  elif not train and not files:
    errors.append(('train_files', values['train_files'], f'and data.files are both empty: {one_of}'))
  if validation and files:
    errors.append(('validation_files', values['validation_files'],
                   'only goes with data.train_files; data.files is split by data.validation_fraction'))
  fraction = values['validation_fraction']
  if files and not (_is_number(fraction) and 0 < fraction < 1):
    errors.append(('validation_fraction', fraction, 'must be a number in (0, 1): the expected share of the '
                   'documents of data.files that go to the validation split'))
  if values['txt_documents'] not in TXT_DOCUMENTS:
    errors.append(('txt_documents', values['txt_documents'], f'must be one of {", ".join(map(repr, TXT_DOCUMENTS))}'))
  if not isinstance(values['text_key'], str) or not values['text_key']:
    errors.append(('text_key', values['text_key'], 'must name the JSONL field holding the text (non-empty)'))
  for key in ('train_split', 'eval_split'):
    split = _setting_or(data_cfg, key)
    if split is not None and split not in SPLITS:
      errors.append((key, split, f"must be one of {', '.join(map(repr, SPLITS))} for data.task='text_files'"))
  return errors


@register('data')
def check_text_files_settings(c: Any, problems: Problems) -> None:
  """The file keys' types and combination when data.task='text_files' (a registered check, config/checks.py;
  the files themselves: check_text_files)."""
  if c.data.task == TASK:
    for key, value, allowed in setting_errors(c.data):
      problems.add(f'data.{key}', value, allowed)


def _raise_setting_errors(data_cfg: Any) -> None:
  errors = setting_errors(data_cfg)
  if errors:
    raise ValueError('\n'.join(f'data.{key}={value!r}: {allowed}' for key, value, allowed in errors))


def file_format(path: str) -> str | None:
  """'txt' or 'jsonl' for a supported file name (.txt, .jsonl, either + .gz), else None."""
  lower = path.lower()
  for suffix, kind in FORMATS.items():
    if lower.endswith(suffix):
      return kind
  return None


def expand_globs(key: str, value: str) -> tuple[str, ...]:
  """The files data.`key` (comma-separated globs; ~ and ** work) names: resolved, unique, sorted paths."""
  paths = set()
  for pattern in value.split(','):
    pattern = pattern.strip()
    if not pattern:
      continue
    matches = [p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p)]
    if not matches:
      where = '' if os.path.isabs(os.path.expanduser(pattern)) else f' (relative to {os.getcwd()})'
      glob_part = '' if pattern == value.strip() else f' the glob {pattern!r}'
      raise ValueError(f'data.{key}={value!r}:{glob_part} matches no file{where}.')
    for match in matches:
      if file_format(match) is None:
        raise ValueError(f'data.{key}={value!r}: {match!r} is not a supported file: use '
                         f'{", ".join(FORMATS)} files.')
      paths.add(os.path.realpath(match))
  return tuple(sorted(paths))


# ---------------------------------------------------------------------------------------------- reading


def _decode(path: str, data: bytes) -> str:
  """The UTF-8 text of a file's bytes (gunzipped for .gz); ValueError naming the file and the byte offset."""
  compressed = path.lower().endswith('.gz')
  if compressed:
    try:
      data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
      raise ValueError(f'text file {path!r} is not a valid gzip file ({e}).') from None
  try:
    text = data.decode('utf-8')
  except UnicodeDecodeError as e:
    where = ' of the decompressed data' if compressed else ''
    raise ValueError(f'text file {path!r} is not UTF-8: byte offset {e.start}{where} ({e.reason}: '
                     f'{data[e.start:e.start + 4]!r}).') from None
  return text.removeprefix('\ufeff')


def _normalise_lines(text: str) -> list[str]:
  return [line.rstrip() for line in text.replace('\r\n', '\n').replace('\r', '\n').split('\n')]


def txt_documents(text: str, mode: str) -> list[str]:
  """The documents of a .txt file's text under data.txt_documents=`mode` (see the module docstring)."""
  if mode == 'paragraph':
    return documents.split_passages(text)
  lines = _normalise_lines(text)
  if mode == 'line':
    return [line for line in lines if line]
  if mode == 'file':
    whole = '\n'.join(lines).strip('\n')
    return [whole] if whole else []
  raise ValueError(f'data.txt_documents={mode!r}: must be one of {", ".join(map(repr, TXT_DOCUMENTS))}')


def jsonl_documents(path: str, text: str, text_key: str) -> list[str]:
  """The data.text_key field of every line (blank lines skipped); ValueError naming the file and line."""
  docs = []
  for number, line in enumerate(text.split('\n'), 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f'text file {path!r} line {number}: not valid JSON ({e.msg} at column {e.colno}).') from None
    if not isinstance(record, dict) or text_key not in record:
      fields = sorted(record) if isinstance(record, dict) else type(record).__name__
      raise ValueError(f'text file {path!r} line {number}: no field data.text_key={text_key!r} (the line has '
                       f'{fields}).')
    value = record[text_key]
    if not isinstance(value, str):
      raise ValueError(f'text file {path!r} line {number}: field data.text_key={text_key!r} is a '
                       f'{type(value).__name__}, not a string.')
    if value:
      docs.append(value)
  return docs


# (sha256 of the file's bytes, format, txt_documents, text_key) -> documents; parsing is done once per content.
_PARSED: dict[tuple[str, str, str, str], tuple[str, ...]] = {}


def read_file(path: str, txt_mode: str, text_key: str) -> tuple[str, tuple[str, ...]]:
  """(sha256 of the file's bytes, its documents)."""
  with open(path, 'rb') as f:
    data = f.read()
  digest = hashlib.sha256(data).hexdigest()
  kind = file_format(path)
  key = (digest, kind, txt_mode, text_key)
  if key not in _PARSED:
    text = _decode(path, data)
    docs = jsonl_documents(path, text, text_key) if kind == 'jsonl' else txt_documents(text, txt_mode)
    _PARSED[key] = tuple(docs)
  return digest, _PARSED[key]


def in_validation(text: str, fraction: float) -> bool:
  """The hash split: whether a document of data.files goes to the validation split."""
  digest = hashlib.sha256(text.encode('utf-8')).digest()
  return int.from_bytes(digest[:8], 'little') / 2**64 < fraction


# ---------------------------------------------------------------------------------------------- the corpus


@dataclasses.dataclass(frozen=True)
class Corpus:
  """The documents of both splits and what determines them (`fingerprint` names the seqio task)."""
  rule: dict[str, Any]                 # {'train_files': [...], 'validation_files': [...]} or {'files', 'fraction'}
  txt_documents: str
  text_key: str
  file_digests: tuple[tuple[str, str], ...]   # (resolved path, sha256 of its bytes), sorted by path
  documents: dict[str, tuple[str, ...]] = dataclasses.field(repr=False)   # split -> documents in file order
  fingerprint: str = ''

  def num_bytes(self, split: str) -> int:
    """UTF-8 bytes of the split's documents (without EOS)."""
    return sum(len(doc.encode('utf-8')) for doc in self.documents[split])

  def describe(self) -> dict[str, Any]:
    """JSON-serialisable inputs of the corpus (the cache key's payload without vocabulary, seq_len and split)."""
    return _describe(self.rule, self.txt_documents, self.text_key, self.file_digests)


def _describe(rule: dict[str, Any], txt_mode: str, text_key: str,
              digests: tuple[tuple[str, str], ...]) -> dict[str, Any]:
  return {'format_version': FORMAT_VERSION, 'rule': rule, 'txt_documents': txt_mode, 'text_key': text_key,
          'files': [list(pair) for pair in digests]}


def _sha256_json(payload: dict[str, Any]) -> str:
  return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


_CORPORA: dict[str, Corpus] = {}


def load_corpus(data_cfg: Any) -> Corpus:
  """Checks the settings, expands the globs, reads every file (its bytes are hashed each call; documents are
  parsed and split once per content) and returns both splits' documents."""
  _raise_setting_errors(data_cfg)
  txt_mode, text_key = _setting(data_cfg, 'txt_documents'), _setting(data_cfg, 'text_key')
  files = _setting(data_cfg, 'files').strip()
  if files:
    rule: dict[str, Any] = {'files': list(expand_globs('files', files)),
                            'validation_fraction': float(_setting(data_cfg, 'validation_fraction'))}
    roles = {'files': rule['files']}
  else:
    roles = {'train_files': list(expand_globs('train_files', _setting(data_cfg, 'train_files'))),
             'validation_files': list(expand_globs('validation_files', _setting(data_cfg, 'validation_files')))}
    both = sorted(set(roles['train_files']) & set(roles['validation_files']))
    if both:
      raise ValueError(f'data.train_files={_setting(data_cfg, "train_files")!r} and data.validation_files='
                       f'{_setting(data_cfg, "validation_files")!r} both match {both[:3]}: a file belongs to one '
                       'split.')
    rule = dict(roles)
  read = {path: read_file(path, txt_mode, text_key) for paths in roles.values() for path in paths}
  digests = tuple(sorted((path, digest) for path, (digest, _) in read.items()))
  fingerprint = _sha256_json(_describe(rule, txt_mode, text_key, digests))
  if fingerprint not in _CORPORA:
    if files:
      every = [doc for path in rule['files'] for doc in read[path][1]]
      fraction = rule['validation_fraction']
      held_out = [in_validation(doc, fraction) for doc in every]
      docs = {'train': tuple(d for d, v in zip(every, held_out) if not v),
              'validation': tuple(d for d, v in zip(every, held_out) if v)}
    else:
      docs = {split: tuple(doc for path in roles[f'{split}_files'] for doc in read[path][1]) for split in SPLITS}
    _CORPORA[fingerprint] = Corpus(rule, txt_mode, text_key, digests, docs, fingerprint)
  return _CORPORA[fingerprint]


def _token_bound(vocabulary: str, num_bytes: int, num_docs: int) -> tuple[int, bool]:
  """(an upper bound of the split's tokens incl. EOS, whether it is exact) without tokenizing.

  'byte': one token per byte (exact); BPE files (byte-level): at most one token per byte; SentencePiece: at most
  one per byte of the normalised text, taken as <= 3 bytes per input byte (a space may become the 3-byte '▁')
  plus the dummy prefix.
  """
  if vocabulary == 'byte':
    return num_bytes + num_docs, True
  if vocabulary == 'gpt2' or str(vocabulary).endswith('.tiktoken'):
    return num_bytes + num_docs, False
  return 3 * num_bytes + 2 * num_docs, False


def check_text_files(data_cfg: Any, eval_batches: int = 0) -> Corpus | None:
  """For data.task='text_files': reads, decodes and parses every file (no tokenization) and raises ValueError for
  bad settings, a glob matching no file, bytes that are not UTF-8, bad JSONL lines, an empty corpus or split, or a
  train split too short for one sequence or one batch (from a token bound, see `_token_bound`). eval_batches > 0:
  the validation split must have documents. Returns the corpus; None for other tasks."""
  if _setting_or(data_cfg, 'task') != TASK:
    return None
  corpus = load_corpus(data_cfg)
  files = _setting(data_cfg, 'files').strip()
  keys = (f'data.files={files!r}' if files else
          f'data.train_files={_setting(data_cfg, "train_files")!r}')
  paths = [path for path, _ in corpus.file_digests]
  counts = {split: len(corpus.documents[split]) for split in SPLITS}
  if not sum(counts.values()):
    raise ValueError(f'{keys}: the corpus is empty: its {len(paths)} file(s) ({", ".join(paths[:3])}'
                     f'{", ..." if len(paths) > 3 else ""}) hold no document.')
  if files and not counts['validation']:
    raise ValueError(f'data.validation_fraction={corpus.rule["validation_fraction"]!r}: the hash split of the '
                     f'{counts["train"]} documents of {keys} leaves the validation split empty: raise it or add '
                     'documents.')
  if not counts['train']:
    raise ValueError(f'{keys}: the train split has no documents.')
  split = data_cfg.eval_split
  if eval_batches and not counts[split]:
    raise ValueError(f"data.eval_split={split!r} of data.task='text_files' has no documents (data.validation_files "
                     f'is empty) but train.eval_batches={eval_batches} asks for validation batches: set '
                     'data.validation_files, use data.files with data.validation_fraction, or set '
                     'train.eval_batches=0.')
  train = data_cfg.train_split
  bound, exact = _token_bound(data_cfg.vocabulary, corpus.num_bytes(train), counts[train])
  at_most = '' if exact else 'at most '
  seq_len, batch_size = int(data_cfg.seq_len), int(data_cfg.batch_size)
  if bound < seq_len:
    raise ValueError(f'{keys}: the {train!r} split has {at_most}{bound} tokens (with EOS) under '
                     f'data.vocabulary={data_cfg.vocabulary!r}, shorter than one sequence of data.seq_len={seq_len}.')
  if math.ceil(bound / seq_len) < batch_size:
    raise ValueError(f'{keys}: the {train!r} split has {at_most}{bound} tokens (with EOS) under '
                     f'data.vocabulary={data_cfg.vocabulary!r}, {at_most}{math.ceil(bound / seq_len)} sequences of '
                     f'data.seq_len={seq_len}: fewer than one global batch (data.batch_size={batch_size}).')
  return corpus


# ---------------------------------------------------------------------------------------------- the disk cache


def vocabulary_identity(vocabulary: str) -> str:
  """'byte', or the sha256 of the vocabulary's file (the shipped SentencePiece / GPT-2 file or a path)."""
  if vocabulary == 'byte':
    return 'byte'
  named = {'sentencepiece': vocabularies.SHIPPED_MODEL, 'gpt2': vocabularies.SHIPPED_GPT2}
  path = named.get(vocabulary, vocabulary)
  with open(path, 'rb') as f:
    return 'sha256:' + hashlib.sha256(f.read()).hexdigest()


def cache_payload(corpus: Corpus, data_cfg: Any, split: str) -> dict[str, Any]:
  """Everything that determines the rows of `split` (hashed into the cache key)."""
  return {**corpus.describe(), 'vocabulary': vocabulary_identity(data_cfg.vocabulary),
          'seq_len': int(data_cfg.seq_len), 'split': split}


def cache_key(corpus: Corpus, data_cfg: Any, split: str) -> str:
  """The sha256 (hex) naming the cache file of `split`'s rows."""
  return _sha256_json(cache_payload(corpus, data_cfg, split))


def cache_path(cache_dir: str, key: str) -> str:
  return os.path.join(cache_dir, f'text_files_{key}.npy')


def _read_cache(path: str, seq_len: int) -> np.ndarray | None:
  try:
    rows = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    logging.warning('text_files: unreadable cache file %s (%s): tokenizing again', path, e)
    return None
  if rows.dtype != np.int32 or rows.ndim != 2 or rows.shape[1] != seq_len:
    logging.warning('text_files: cache file %s holds %s %s, not int32 [N, %d]: tokenizing again', path, rows.dtype,
                    rows.shape, seq_len)
    return None
  return rows


def _write_atomically(path: str, write: Callable[[Any], None]) -> None:
  """Writes via a temporary file in the same directory and os.replace: readers never see a partial file."""
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix='.tmp_', suffix=os.path.basename(path))
  try:
    with os.fdopen(fd, 'wb') as f:
      write(f)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _write_cache(path: str, rows: np.ndarray, manifest: dict[str, Any]) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  _write_atomically(path, lambda f: np.save(f, rows, allow_pickle=False))
  text = json.dumps(manifest, indent=1, sort_keys=True).encode()
  _write_atomically(path[:-len('.npy')] + '.json', lambda f: f.write(text))


def load_rows(data_cfg: Any, split: str, tokenize: Callable[[], np.ndarray]) -> np.ndarray:
  """The int32 [N, data.seq_len] rows of `split`: from data.cache_dir when it holds them, else `tokenize()`
  (then saved there). Logs the tokenization time and the token count."""
  corpus = load_corpus(data_cfg)
  seq_len, cache_dir = int(data_cfg.seq_len), _setting(data_cfg, 'cache_dir')
  path = None
  if cache_dir:
    payload = cache_payload(corpus, data_cfg, split)
    path = cache_path(cache_dir, _sha256_json(payload))
    rows = _read_cache(path, seq_len) if os.path.isfile(path) else None
    if rows is not None:
      logging.info('text_files: split %r: %d rows (%d tokens) from the cache %s', split, len(rows),
                   np.count_nonzero(rows), path)
      return rows
  start = time.time()
  rows = np.ascontiguousarray(tokenize(), np.int32)
  seconds, tokens = time.time() - start, int(np.count_nonzero(rows))
  logging.info('text_files: tokenized split %r: %d documents, %d tokens, %d rows of %d in %.1fs (%.0f tokens/s)',
               split, len(corpus.documents[split]), tokens, len(rows), seq_len, seconds, tokens / max(seconds, 1e-9))
  if path is not None:
    _write_cache(path, rows, {**payload, 'rows': len(rows), 'tokens': tokens,
                              'documents': len(corpus.documents[split])})
    logging.info('text_files: saved split %r to the cache %s', split, path)
  return rows
