"""Downloads a pinned Debian package with `apt-get download`, falling back to the current version when the pin
is gone from the archive (Debian replaces versions at every point release and security update).

`download_deb` tries `apt-get download NAME=PINNED`; when that fails and `apt-cache policy NAME` no longer lists
the pinned version, it downloads the candidate version instead, logs a warning and says so in the returned
`Download` (`differs`). A package apt does not know at all, a download that fails although the pin is listed, or
no apt at all raise `PackageError` naming the package and what to do. Every apt call goes through a `Runner`
(`run_command` by default), so the logic can be tested without apt or a network.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import subprocess
from collections.abc import Callable, Sequence

Runner = Callable[[Sequence[str], str], subprocess.CompletedProcess]
"""Runs a command in a directory (cmd, cwd) and returns its exit status and captured text output."""

_log = logging.getLogger(__name__)


class PackageError(RuntimeError):
  """A package that cannot be had; the message names it and says what to do."""


@dataclasses.dataclass(frozen=True)
class Download:
  """A downloaded package: the pinned version and the version actually downloaded (`filename` in the dir)."""
  name: str
  pinned_version: str
  version: str
  filename: str

  @property
  def differs(self) -> bool:
    return self.version != self.pinned_version


def run_command(cmd: Sequence[str], cwd: str) -> subprocess.CompletedProcess:
  """The default Runner: a subprocess in `cwd` with the C locale (apt's messages unlocalized), output captured."""
  return subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, check=False,
                        env={**os.environ, 'LC_ALL': 'C'})


def _run(runner: Runner, cmd: Sequence[str], cwd: str, name: str) -> subprocess.CompletedProcess:
  try:
    return runner(cmd, cwd)
  except FileNotFoundError as e:
    raise PackageError(f'cannot run {cmd[0]!r} for the Debian package {name}: {e}. The experiment corpus needs apt '
                       f'(Debian 12 or a derivative), or the package files already in the download directory.') from e


def apt_policy(name: str, runner: Runner = run_command, cwd: str = '.') -> tuple[str | None, list[str]]:
  """(candidate version or None, the versions of the version table some archive offers) from `apt-cache policy
  NAME`; a version known only from /var/lib/dpkg/status (installed, not downloadable) is left out."""
  proc = _run(runner, ['apt-cache', 'policy', name], cwd, name)
  candidate, versions, in_table, version = None, [], False, None
  for line in proc.stdout.splitlines():
    m = re.match(r'\s*Candidate:\s*(\S+)\s*$', line)
    if m and m.group(1) != '(none)':
      candidate = m.group(1)
    if line.strip() == 'Version table:':
      in_table = True
    elif in_table and (m := re.fullmatch(r'\s*(?:\*\*\*\s+)?(\S+)\s+-?\d+\s*', line)):
      version = m.group(1)
    elif in_table and version and (m := re.match(r'\s*-?\d+\s+(\S+)', line)):
      if m.group(1) != '/var/lib/dpkg/status' and version not in versions:
        versions.append(version)
  return candidate, versions


def _downloaded(download_dir: str, name: str, version: str) -> str | None:
  """The file name `apt-get download` gives NAME=VERSION (NAME_VERSION_ARCH.deb, ':' as '%3a') if present."""
  prefix = f'{name}_{version.replace(":", "%3a")}_'
  found = sorted(f for f in os.listdir(download_dir) if f.startswith(prefix) and f.endswith('.deb'))
  return found[0] if found else None


def download_deb(name: str, version: str, filename: str, download_dir: str,
                 runner: Runner = run_command) -> Download:
  """`filename` (NAME=VERSION) in `download_dir`, downloaded unless there; when the archive no longer has VERSION,
  the candidate version's file instead (reused when there), with a warning. Raises PackageError otherwise."""
  os.makedirs(download_dir, exist_ok=True)
  if os.path.exists(os.path.join(download_dir, filename)):
    return Download(name, version, version, filename)
  cmd = ['apt-get', 'download', f'{name}={version}']
  print(f'  downloading: {" ".join(cmd)}', flush=True)
  proc = _run(runner, cmd, download_dir, name)
  if proc.returncode == 0 and os.path.exists(os.path.join(download_dir, filename)):
    return Download(name, version, version, filename)
  candidate, versions = apt_policy(name, runner, download_dir)
  failure = f'`{" ".join(cmd)}` failed (exit {proc.returncode}):\n{proc.stderr.strip()[-2000:]}\n'
  if candidate is None:
    raise PackageError(f'{failure}The Debian package {name} is not in the apt package lists at all (`apt-cache '
                       f'policy {name}` shows no candidate). Run `apt-get update` (as root) with Debian 12 '
                       f'"bookworm" main (and bookworm-updates, bookworm-security) in the apt sources, or put '
                       f'{filename} into {download_dir}.')
  if version in versions:
    raise PackageError(f'{failure}{name}={version} is still in the apt package lists, so the download itself '
                       'failed: check the network access to the Debian mirror and rerun.')
  _log.warning('%s: the pinned version %s is gone from the apt archive (`apt-cache policy %s` lists %s); using '
               'the current candidate %s instead. The corpus will DIFFER from the pinned one (manifest.json: '
               'differs_from_pins). If `apt-get update` has not run lately, run it and rebuild with --force: the '
               'pin may only be missing from stale package lists.', name, version, name,
               ', '.join(versions) or 'no versions', candidate)
  found = _downloaded(download_dir, name, candidate)
  if found is None:
    cmd = ['apt-get', 'download', f'{name}={candidate}']
    print(f'  downloading: {" ".join(cmd)}', flush=True)
    proc = _run(runner, cmd, download_dir, name)
    found = _downloaded(download_dir, name, candidate)
    if proc.returncode != 0 or found is None:
      raise PackageError(f'`{" ".join(cmd)}` (the current version of {name}, whose pin {version} is gone) failed '
                         f'(exit {proc.returncode}):\n{proc.stderr.strip()[-2000:]}\nCheck the network access to '
                         'the Debian mirror and rerun.')
  return Download(name, version, candidate, found)


def pin_differences(pins: Sequence[tuple[str, str, str]]) -> list[dict]:
  """[{'name', 'pinned_version', 'version'}] of the (name, pinned version, used version) that differ."""
  return [{'name': n, 'pinned_version': p, 'version': v} for n, p, v in pins if v != p]


def warn_differs(what: str, differences: Sequence[dict], note: str = '') -> None:
  """Logs that `what` differs from the pinned corpus, and how (the `pin_differences`)."""
  versions = ', '.join(f'{d["name"]} {d["version"]} (pinned {d["pinned_version"]})' for d in differences)
  _log.warning('%s DIFFERS from the pinned corpus: versions used instead of the pins gone from the archive: %s '
               '(manifest.json: differs_from_pins, pin_differences).%s', what, versions, note)
