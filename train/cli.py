"""What every command-line entry point shares: a user's mistake is one line, not a traceback.

    python -m train ... --config.train.stpes=10
    error: --config.train.stpes: no such key; did you mean --config.train.steps?

`run_main(main, argv)` calls `main(argv)`. An error that our own code raised about the user's
input or run (a ValueError, KeyError, an OSError such as FileNotFoundError or PermissionError, or
the trainer's NaN stop, raised by a frame of this repository's packages) prints as `error: <message>` on one line and exits 2;
every other exception (a bug, or an error inside JAX) keeps its traceback. `check_overrides`
reads `--config.<dotted key>=...` arguments against a loaded config before absl parses them, so
a misspelt key names its full path and the closest real one.
"""
from __future__ import annotations

import argparse
import difflib
import os
import sys
import sysconfig
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]  # the folder holding train/, sample/, ...
_PACKAGES = ('paradigms', 'sample', 'pipelines', 'evaluators', 'interop', 'train', 'configs', 'arena',
             'benchmarks', 'tpu', 'examples')
_USER_ERRORS = (ValueError, KeyError, OSError, FloatingPointError)  # the last: a NaN stop
_STDLIB = Path(sysconfig.get_paths()['stdlib']).resolve()


class UserError(ValueError):
  """A mistake in the user's input or setup whose message says what to change."""


class ArgumentParser(argparse.ArgumentParser):
  """argparse whose errors are one line (and a pointer to --help), not the whole usage."""

  def error(self, message):
    self.exit(2, f'{self.prog}: error: {message} (--help lists the flags)\n')


def is_ours(err: BaseException) -> bool:
  """Whether `err` is a user error raised by this repository's own code: the innermost frame
  outside the standard library (os.makedirs, json, ...) is one of ours."""
  if isinstance(err, UserError):
    return True
  if not isinstance(err, _USER_ERRORS):
    return False
  frames = []
  tb = err.__traceback__
  while tb is not None:
    frames.append(Path(tb.tb_frame.f_code.co_filename).resolve())
    tb = tb.tb_next
  for path in reversed(frames):
    if _STDLIB in path.parents and 'site-packages' not in path.parts:
      continue
    try:
      return path.relative_to(_ROOT).parts[0] in _PACKAGES
    except ValueError:
      return False
  return False


def message(err: BaseException) -> str:
  """One line: the error's own words (KeyError's repr quotes stripped; newlines folded)."""
  text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
  if isinstance(err, OSError) and err.filename and not str(err.filename) in str(text):
    text = f'{text}: {err.filename}'
  return ' '.join(str(text).split())


def run_main(main, argv=None) -> None:
  """`main(argv)`, with user errors printed as one line and exit status 2, and an interruption
  (e.g. the arena's "rerun to resume") as one line and exit status 130."""
  try:
    main(argv)
  except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM (a training run has saved its checkpoint)
    print(f'stopped: {message(err)}' if str(err) else 'stopped', file=sys.stderr)
    sys.exit(130)
  except Exception as err:  # noqa: BLE001 - sorted into user errors and the rest below
    if not is_ours(err):
      raise
    print(f'error: {message(err)}', file=sys.stderr)
    sys.exit(2)


def config_keys(config, prefix: str = '') -> list[str]:
  """Every dotted key of a ConfigDict, e.g. ['data.batch_size', ..., 'train.steps', ...]."""
  keys = []
  for k in config.keys():
    v = config[k]
    if hasattr(v, 'keys') and callable(v.keys):
      keys += config_keys(v, f'{prefix}{k}.')
    else:
      keys.append(prefix + k)
  return keys


def check_overrides(config, argv, flag: str = 'config') -> None:
  """Raise UserError for a `--<flag>.<key>=value` (or `--<flag>.<key> value`) argument whose
  dotted key the config lacks, naming the closest keys."""
  keys = config_keys(config)
  sections = {k.rsplit('.', 1)[0] for k in keys if '.' in k}
  for arg in argv:
    if not arg.startswith(f'--{flag}.'):
      continue
    key = arg[len(flag) + 3:].split('=', 1)[0]
    if key in keys:
      continue
    if key in sections:
      raise UserError(f'--{flag}.{key} is a section; set one of its keys, e.g. --{flag}.'
                      f'{next(k for k in keys if k.startswith(key + "."))}=...')
    close = difflib.get_close_matches(key, keys, n=2, cutoff=0.6)
    if not close:  # a misspelt last part: compare within the section
      section, _, last = key.rpartition('.')
      mine = [k for k in keys if k.rpartition('.')[0] == section]
      close = [f'{section}.{m}' if section else m for m in difflib.get_close_matches(
          last, [k.rpartition('.')[2] for k in mine], n=2, cutoff=0.5)]
    hint = ('; did you mean ' + ' or '.join(f'--{flag}.{c}' for c in close) + '?' if close else
            f'; the sections are {sorted(s for s in sections if "." not in s)}')
    raise UserError(f'--{flag}.{key}: no such key{hint}')


def config_arg(argv, flag: str = 'config') -> str | None:
  """The value of `--config=FILE:ARG` or `--config FILE:ARG` in argv, if present."""
  for i, arg in enumerate(argv):
    if arg.startswith(f'--{flag}='):
      return arg.split('=', 1)[1]
    if arg == f'--{flag}' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def writable_dir(path: str, what: str = '--workdir') -> str:
  """`path` created if needed and checked writable (a probe file); a UserError naming it if it
  is a file, lies under a file, or cannot be written. Returns its absolute path."""
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.exists(path) and not os.path.isdir(path):
    raise UserError(f'{what}={path} is a file, not a directory; choose another {what}')
  try:
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, f'.write-probe-{os.getpid()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as err:
    raise UserError(f'{what}={path} is not writable ({err.strerror or err}); choose a directory '
                    'you can write to') from None
  return path
