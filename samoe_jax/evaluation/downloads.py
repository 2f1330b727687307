"""Downloading one file with the standard library: a temporary file, its SHA-256, then an atomic rename.

Any URL urllib opens works (https://, http://, file:// for a local mirror in tests). A failure is a
DownloadError (an OSError) whose message is one line naming the URL; nothing is left at the destination.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request

CHUNK = 1 << 20
USER_AGENT = 'samoe-jax-fetch-eval-data'


class DownloadError(OSError):
  """A file that could not be downloaded: 'could not download URL: reason'."""


def file_digest(path: str) -> tuple[str, int]:
  """(SHA-256 hex digest, size in bytes) of the file at `path`."""
  digest, size = hashlib.sha256(), 0
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(CHUNK), b''):
      digest.update(chunk)
      size += len(chunk)
  return digest.hexdigest(), size


def download(url: str, dest: str, *, timeout: float = 60.0) -> tuple[str, int]:
  """Streams `url` to `dest` (through `dest + '.part'`, renamed when complete); returns (SHA-256, bytes)."""
  part = dest + '.part'
  digest, size = hashlib.sha256(), 0
  try:
    request = urllib.request.Request(url, headers={'User-Agent': USER_AGENT})
    with urllib.request.urlopen(request, timeout=timeout) as response, open(part, 'wb') as out:
      for chunk in iter(lambda: response.read(CHUNK), b''):
        digest.update(chunk)
        size += len(chunk)
        out.write(chunk)
  except (OSError, ValueError) as err:   # URLError and HTTPError are OSErrors; a malformed URL is a ValueError
    if os.path.exists(part):
      os.remove(part)
    raise DownloadError(f'could not download {url}: {_reason(err)}') from None
  os.replace(part, dest)
  return digest.hexdigest(), size


def _reason(err: BaseException) -> str:
  """The cause of a failed download in a few words, on one line."""
  if isinstance(err, urllib.error.HTTPError):
    return f'HTTP {err.code} {err.reason}'
  if isinstance(err, urllib.error.URLError):
    if not isinstance(err.reason, BaseException):
      return ' '.join(str(err.reason).split())
    err = err.reason
  if isinstance(err, OSError) and err.strerror:
    return err.strerror
  return ' '.join(str(err).split()) or type(err).__name__
