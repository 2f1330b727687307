"""Tests of the Debian pin fallback of the experiment corpus (samoe_jax.data.debian_packages and its use in
samoe_jax.data.experiment_corpus): a fake apt runner stands in for apt-get / apt-cache, no network."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess

import pytest

from samoe_jax.data import debian_packages as dp
from samoe_jax.data import experiment_corpus as ec
from test_experiment_corpus import COPYRIGHT, _fake_deb  # pylint: disable=g-bad-import-order  (tests/ helper)


class FakeApt:
  """`apt-get download NAME=VERSION` and `apt-cache policy NAME` over `archive` {(name, version): .deb bytes};
  the last version of a name is its candidate. Records every command."""

  def __init__(self, archive: dict[tuple[str, str], bytes], broken_downloads: bool = False):
    self.archive, self.broken_downloads, self.calls = archive, broken_downloads, []

  def __call__(self, cmd, cwd):
    cmd = list(cmd)
    self.calls.append(cmd)
    if cmd[:2] == ['apt-get', 'download']:
      name, version = cmd[2].split('=', 1)
      if (name, version) in self.archive and not self.broken_downloads:
        path = os.path.join(cwd, f'{name}_{version.replace(":", "%3a")}_all.deb')
        with open(path, 'wb') as f:
          f.write(self.archive[name, version])
        return subprocess.CompletedProcess(cmd, 0, '', '')
      if (name, version) in self.archive:
        return subprocess.CompletedProcess(cmd, 100, '', f'E: Failed to fetch {name} Temporary failure resolving')
      if any(n == name for n, _ in self.archive):
        return subprocess.CompletedProcess(cmd, 100, '', f"E: Version '{version}' for '{name}' was not found")
      return subprocess.CompletedProcess(cmd, 100, '', f'E: Unable to locate package {name}')
    if cmd[:2] == ['apt-cache', 'policy']:
      versions = [v for n, v in self.archive if n == cmd[2]]
      if not versions:
        return subprocess.CompletedProcess(cmd, 0, '', f'N: Unable to locate package {cmd[2]}')
      table = ''.join(f'     {v} 500\n        500 http://deb.debian.org/debian bookworm/main amd64 Packages\n'
                      for v in reversed(versions))
      return subprocess.CompletedProcess(
          cmd, 0, f'{cmd[2]}:\n  Installed: (none)\n  Candidate: {versions[-1]}\n  Version table:\n{table}', '')
    raise AssertionError(f'unexpected command {cmd}')


def no_apt(cmd, cwd):
  raise FileNotFoundError(2, 'No such file or directory', cmd[0])


def test_pin_present_is_downloaded_and_nothing_differs(tmp_path):
  apt = FakeApt({('pkg', '1.0-1'): b'pinned', ('pkg', '1.0-2'): b'newer'})
  d = dp.download_deb('pkg', '1.0-1', 'pkg_1.0-1_all.deb', str(tmp_path), apt)
  assert d == dp.Download('pkg', '1.0-1', '1.0-1', 'pkg_1.0-1_all.deb') and not d.differs
  assert (tmp_path / 'pkg_1.0-1_all.deb').read_bytes() == b'pinned'
  assert apt.calls == [['apt-get', 'download', 'pkg=1.0-1']]          # no policy lookup needed
  assert dp.pin_differences([(d.name, d.pinned_version, d.version)]) == []
  # Already downloaded: apt is not asked again.
  assert dp.download_deb('pkg', '1.0-1', 'pkg_1.0-1_all.deb', str(tmp_path), no_apt) == d


def test_pin_gone_takes_the_candidate_with_a_warning(tmp_path, caplog):
  apt = FakeApt({('pkg', '2:9.0-1'): b'old', ('pkg', '2:9.0-3'): b'current'})
  with caplog.at_level(logging.WARNING):
    d = dp.download_deb('pkg', '2:9.0-2', 'pkg_2%3a9.0-2_all.deb', str(tmp_path), apt)
  assert (d.pinned_version, d.version, d.filename, d.differs) == ('2:9.0-2', '2:9.0-3', 'pkg_2%3a9.0-3_all.deb', True)
  assert (tmp_path / d.filename).read_bytes() == b'current'
  assert apt.calls == [['apt-get', 'download', 'pkg=2:9.0-2'], ['apt-cache', 'policy', 'pkg'],
                       ['apt-get', 'download', 'pkg=2:9.0-3']]
  msg = caplog.text
  assert 'pkg: the pinned version 2:9.0-2 is gone' in msg and 'candidate 2:9.0-3' in msg and 'DIFFER' in msg
  assert dp.pin_differences([('pkg', '2:9.0-2', '2:9.0-3'), ('other', '1', '1')]) == [
      {'name': 'pkg', 'pinned_version': '2:9.0-2', 'version': '2:9.0-3'}]
  # The candidate's file is reused: apt-cache is asked, nothing is downloaded again.
  apt.calls.clear()
  assert dp.download_deb('pkg', '2:9.0-2', 'pkg_2%3a9.0-2_all.deb', str(tmp_path), apt) == d
  assert [c for c in apt.calls if c[0] == 'apt-get'] == [['apt-get', 'download', 'pkg=2:9.0-2']]


def test_missing_package_no_apt_and_failed_download_are_clear_errors(tmp_path):
  with pytest.raises(dp.PackageError) as e:
    dp.download_deb('gone-doc', '1.0', 'gone-doc_1.0_all.deb', str(tmp_path), FakeApt({}))
  msg = str(e.value)
  assert 'gone-doc is not in the apt package lists at all' in msg and 'apt-get update' in msg
  assert 'Unable to locate package gone-doc' in msg and 'gone-doc_1.0_all.deb' in msg
  with pytest.raises(dp.PackageError, match=r"cannot run 'apt-get' for the Debian package pkg: .*needs apt"):
    dp.download_deb('pkg', '1.0', 'pkg_1.0_all.deb', str(tmp_path), no_apt)
  # The pin is still listed but its download fails: no fallback, the network is the problem.
  with pytest.raises(dp.PackageError, match=r'pkg=1\.0 is still in the apt package lists.*network'):
    dp.download_deb('pkg', '1.0', 'pkg_1.0_all.deb', str(tmp_path), FakeApt({('pkg', '1.0'): b'x'}, True))
  assert os.listdir(tmp_path) == []


def test_apt_policy_parses_candidate_and_downloadable_versions():
  text = ('perl-modules-5.36:\n  Installed: 5.36.0-7+deb12u2\n  Candidate: 5.36.0-7+deb12u4\n  Version table:\n'
          '     5.36.0-7+deb12u4 500\n        500 http://deb.debian.org/debian bookworm/main amd64 Packages\n'
          '        500 http://deb.debian.org/debian-security bookworm-security/main amd64 Packages\n'
          ' *** 5.36.0-7+deb12u2 100\n        100 /var/lib/dpkg/status\n')
  run = lambda cmd, cwd: subprocess.CompletedProcess(cmd, 0, text, '')
  assert dp.apt_policy('perl-modules-5.36', run) == ('5.36.0-7+deb12u4', ['5.36.0-7+deb12u4'])
  none = lambda cmd, cwd: subprocess.CompletedProcess(cmd, 0, 'x:\n  Installed: (none)\n  Candidate: (none)\n', '')
  assert dp.apt_policy('x', none) == (None, [])


def _deb(name: str, words: str, parts: int = 8) -> bytes:
  """A fake documentation package: `parts` long .rst files of `words`, and a DEP-5 copyright file."""
  files = {f'usr/share/doc/{name}/copyright': COPYRIGHT}
  for i in range(parts):
    files[f'usr/share/doc/{name}/guide/part{i}.rst'] = (
        f'Part {i}\n=======\n\n' + '\n\n'.join(f'{words} {i} {k}. ' * 12 for k in range(12))).encode()
  return _fake_deb(files)


def _source(name: str, version: str, deb: bytes) -> ec.Source:
  return ec.Source(name, version, 'deb', f'{name}_{version}_all.deb', hashlib.sha256(deb).hexdigest(), 'GPL-2',
                   f'usr/share/doc/{name}/copyright', '*', '', '', f'usr/share/doc/{name}/', r'.+\.rst', '', 'rst',
                   f'The {name} guide')


def test_build_records_and_reports_a_pin_gone(tmp_path, monkeypatch, caplog):
  monkeypatch.setattr(ec, 'SP_VOCAB_SIZE', 300)
  monkeypatch.setattr(ec, 'MIN_TRAIN_TOKENS', 1000)
  held = _deb('held-doc', 'memory pages move between the caches and main memory')
  pinned = _deb('moved-doc', 'the scheduler runs every task on some processor')
  current = _deb('moved-doc', 'the scheduler runs every task on some processor', parts=9)
  srcs = (_source('held-doc', '1.0-1', held), _source('moved-doc', '2.0-1', pinned))

  # Pins present (downloaded through apt, or already in the download dir): the same files, the same manifest,
  # and no pin fields at all.
  archive = {('held-doc', '1.0-1'): held, ('moved-doc', '2.0-1'): pinned, ('moved-doc', '2.0-2'): current}
  m_apt = ec.build(str(tmp_path / 'a'), str(tmp_path / 'dl_a'), srcs=srcs, runner=FakeApt(archive))
  m_dir = ec.build(str(tmp_path / 'b'), str(tmp_path / 'dl_a'), srcs=srcs, runner=no_apt)
  assert (tmp_path / 'a' / 'manifest.json').read_bytes() == (tmp_path / 'b' / 'manifest.json').read_bytes()
  assert m_apt == m_dir and 'differs_from_pins' not in m_apt and 'pin_differences' not in m_apt
  assert [(s['version'], s['sha256']) for s in m_apt['sources']] == [(s.version, s.sha256) for s in srcs]
  assert not any('pinned_version' in s or 'differs_from_pin' in s for s in m_apt['sources'])

  # moved-doc 2.0-1 gone from the archive: 2.0-2 is used, recorded and reported; the build does not fail.
  del archive['moved-doc', '2.0-1']
  out = str(tmp_path / 'c')
  with caplog.at_level(logging.WARNING):
    m = ec.build(out, str(tmp_path / 'dl_c'), srcs=srcs, runner=FakeApt(archive))
  assert m['differs_from_pins'] is True
  assert m['pin_differences'] == [{'name': 'moved-doc', 'pinned_version': '2.0-1', 'version': '2.0-2'}]
  held_e, moved_e = m['sources']
  assert (held_e['version'], held_e['pinned_version'], held_e['differs_from_pin']) == ('1.0-1', '1.0-1', False)
  assert (moved_e['version'], moved_e['pinned_version'], moved_e['differs_from_pin']) == ('2.0-2', '2.0-1', True)
  assert (moved_e['file'], moved_e['sha256']) == ('moved-doc_2.0-2_all.deb', hashlib.sha256(current).hexdigest())
  assert moved_e['documents']['train'] + moved_e['documents']['validation'] == 9       # the current package's files
  assert m['build'] == ec.build_key(srcs)                                              # the pins it was asked for
  assert m['files'] != m_apt['files']
  with open(os.path.join(out, 'manifest.json'), encoding='utf-8') as f:
    assert json.load(f) == m
  assert '## moved-doc 2.0-2' in open(os.path.join(out, 'ATTRIBUTION.md'), encoding='utf-8').read()
  assert 'moved-doc: the pinned version 2.0-1 is gone' in caplog.text
  assert f'{out} DIFFERS from the pinned corpus' in caplog.text and 'moved-doc 2.0-2 (pinned 2.0-1)' in caplog.text

  # The same command again: the corpus is kept, and the difference reported again, not an error.
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    assert ec.build(out, str(tmp_path / 'dl_c'), srcs=srcs, runner=no_apt) == m
  assert 'DIFFERS from the pinned corpus' in caplog.text and 'Kept as it is' in caplog.text

  # A package gone entirely stays one error naming it; nothing is written.
  with pytest.raises(ec.CorpusError, match='held-doc is not in the apt package lists at all'):
    ec.build(str(tmp_path / 'd'), str(tmp_path / 'dl_d'), srcs=srcs, runner=FakeApt({}))
  assert not os.path.exists(tmp_path / 'd')
