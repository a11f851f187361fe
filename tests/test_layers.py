"""The package layers: a module may import only its own layer or lower ones.

  1   paradigms (with paradigms/nn): model definitions; may import only the stdlib, jax, flax,
      numpy and chex (no other third-party package)
  2   sample: jitted samplers (sample/__main__.py is the `python -m sample` entry point, layer 5;
      its text half, which loads runs, is train/sample_text.py)
  3a  pipelines: data
  3b  evaluators: judges (3b may import 3a, 3a may not import 3b)
  3a  interop: checkpoint formats (Hugging Face folders), beside pipelines
  4   train
  5   entry points, may import anything: configs, arena, benchmarks, tpu, examples and
      sample/__main__.py

tests/ is not checked. Imports are read with `ast` (nothing is executed); imports inside functions
count too, and relative imports are resolved against the importing module's package. The body of a
module-level `if __name__ == '__main__':` block is an entry point (layer 5): it runs only as
`python -m <module>`, never on import, so it adds no dependency to the module's importers (e.g.
`python -m evaluators.glyph_judge` reports a user's mistake through train.cli.run_main).
"""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# top-level dir -> (rank, label); 3a < 3b, so pipelines may not import evaluators
LAYERS = {'paradigms': (1, '1'), 'sample': (2, '2'), 'pipelines': (3, '3a'), 'interop': (3, '3a'),
          'evaluators': (4, '3b'), 'train': (5, '4')}
ENTRY_POINTS = ('configs', 'arena', 'benchmarks', 'tpu', 'examples')
LAYERS.update({d: (6, '5') for d in ENTRY_POINTS})
SKIP_DIRS = {'.venv', '.ci-venv', 'build', 'tests', '__pycache__'}
PARADIGMS_MAY_IMPORT = {'jax', 'flax', 'numpy', 'chex', 'paradigms', '__future__'}
CLI_MODULES = ('sample.__main__',)  # `python -m sample`: the entry point inside sample/
HEAVY = ('train', 'pipelines', 'evaluators', 'grain', 'orbax', 'PIL', 'tqdm')


def layer_of(module: str):
  """(rank, label, name) of a dotted module name of ours, or None for stdlib/third-party."""
  for cli in CLI_MODULES:
    if module == cli or module.startswith(cli + '.'):
      return LAYERS['configs'] + (cli,)
  top = module.split('.')[0]
  return LAYERS[top] + (top,) if top in LAYERS else None


def module_name(rel: Path) -> str:
  parts = list(rel.with_suffix('').parts)
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def imported_modules(node: ast.AST, package: str) -> list[str]:
  """The dotted modules an Import/ImportFrom node imports (for `from m import n`, both m and m.n:
  n may be a submodule, e.g. `from sample import __main__`)."""
  if isinstance(node, ast.Import):
    return [a.name for a in node.names]
  base = node.module or ''
  if node.level:
    pkg = package.split('.') if package else []
    if node.level - 1 > len(pkg):
      return []  # beyond the top level: nothing of ours
    up = pkg[:len(pkg) - (node.level - 1)]
    base = '.'.join(up + ([base] if base else []))
  if not base:
    return [a.name for a in node.names]  # `from .. import x` at the root: x is a top-level module
  return [base] + [f'{base}.{a.name}' for a in node.names if a.name != '*']


def is_main_guard(node: ast.stmt) -> bool:
  """Whether a module-level statement is `if __name__ == '__main__':`."""
  test = getattr(node, 'test', None)
  return (isinstance(node, ast.If) and isinstance(test, ast.Compare)
          and isinstance(test.left, ast.Name) and test.left.id == '__name__'
          and len(test.comparators) == 1 and isinstance(test.ops[0], ast.Eq)
          and isinstance(test.comparators[0], ast.Constant)
          and test.comparators[0].value == '__main__')


def upward_imports(path: Path, source: str, root: Path) -> list[str]:
  """One message per import in `source` (the module at `path` under `root`) that breaks the
  layer rule."""
  rel = path.resolve().relative_to(root.resolve())
  name = module_name(rel)
  own = layer_of(name)
  if own is None:
    return []
  package = name if rel.name == '__init__.py' else name.rpartition('.')[0]
  out = []
  tree = ast.parse(source, filename=str(path))
  script = {id(n) for block in tree.body if is_main_guard(block) for n in ast.walk(block)}
  nodes = [n for n in ast.walk(tree)
           if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in script]
  for node in sorted(nodes, key=lambda n: (n.lineno, n.col_offset)):
    text = ' '.join((ast.get_source_segment(source, node) or ast.unparse(node)).split())
    where = f'{rel.as_posix()}:{node.lineno}: {text!r}'
    worst, foreign = None, set()
    for target in imported_modules(node, package):
      layer = layer_of(target)
      if layer is None:
        foreign.add(target.split('.')[0])
      elif layer[0] > own[0] and (worst is None or layer[0] > worst[0]):
        worst = layer
    if worst:
      out.append(f'{where} imports layer {worst[1]} ({worst[2]}) from layer {own[1]} ({own[2]})')
    if own[2] == 'paradigms':
      bad = sorted(m for m in foreign
                   if m not in PARADIGMS_MAY_IMPORT and m not in sys.stdlib_module_names)
      for m in bad:
        out.append(f'{where} imports third-party {m!r} from layer 1 (paradigms), which may import '
                   'only the stdlib, jax, flax, numpy and chex')
  return out


def layered_files(root: Path):
  """Every .py file under the layered and entry-point dirs of `root`."""
  for top in LAYERS:
    for dirpath, dirnames, filenames in os.walk(root / top):
      dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith('.'))
      yield from (Path(dirpath) / f for f in sorted(filenames) if f.endswith('.py'))


def test_no_module_imports_a_higher_layer():
  violations = [v for p in layered_files(ROOT) for v in upward_imports(p, p.read_text(), ROOT)]
  assert not violations, (f'{len(violations)} import(s) break the layer rule:\n'
                          + '\n'.join(violations))


def test_checker_catches_an_upward_import(tmp_path):
  def check(rel, source):
    path = tmp_path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    return upward_imports(path, source, tmp_path)

  flagged = {
      'sample/x.py': 'import jax\n\nfrom train.checkpoint import load_run\n',
      'pipelines/y.py': 'import evaluators.glyph_judge\n',
      'paradigms/z.py': 'def f():\n  from sample import images\n  return images\n',
      'sample/r.py': 'from ..train import x\n',
      'paradigms/nn/q.py': 'from ... import sample\n',
      'paradigms/w.py': 'import grain\n',
      'paradigms/v.py': 'from PIL import Image\n',
      'sample/s.py': 'from sample import __main__\n',
      'evaluators/e.py': 'import sample.__main__ as m\n',
      'evaluators/g.py': ('def main():\n  from train.cli import run_main\n\n\n'
                          "if __name__ == '__main__':\n  main()\n"),
      'evaluators/h.py': "if __name__ != '__main__':\n  from train.cli import run_main\n",
  }
  for rel, source in flagged.items():
    assert len(check(rel, source)) == 1, (rel, check(rel, source))
  [message] = check('sample/x.py', flagged['sample/x.py'])
  assert message == ("sample/x.py:3: 'from train.checkpoint import load_run' "
                     'imports layer 4 (train) from layer 2 (sample)')
  first = {rel: check(rel, source)[0] for rel, source in flagged.items()}
  assert 'layer 3b (evaluators) from layer 3a (pipelines)' in first['pipelines/y.py']
  assert "paradigms/z.py:2: 'from sample import images' imports layer 2" in first['paradigms/z.py']
  assert 'layer 4 (train) from layer 2 (sample)' in first['sample/r.py']
  assert "third-party 'grain'" in first['paradigms/w.py']
  assert 'layer 5 (sample.__main__)' in first['evaluators/e.py']

  allowed = {
      'sample/a.py': 'from paradigms.nn import Transformer\nfrom . import categorical\n',
      'evaluators/b.py': 'from pipelines.glyphs import encode_text\nimport PIL\nimport optax\n',
      'sample/__main__.py': 'from train.checkpoint import load_run\nimport evaluators.images\n',
      'paradigms/c.py': ('from __future__ import annotations\nimport numpy\nimport dataclasses\n'
                         'import jax.numpy as jnp\nfrom flax import linen\nimport chex\n'
                         'from .nn import layers\nfrom paradigms import vqvae\n'),
      'paradigms/nn/d.py': 'from .. import hybrid\nfrom ..nn.layers import rope\n',
      'train/t.py': 'from evaluators import glyph_judge\nfrom sample import hybrid\nimport grain\n',
      'arena/u.py': 'from train.trainer import train\nfrom .runs import x\n',
      'evaluators/m.py': ("def main():\n  pass\n\n\nif __name__ == '__main__':\n"
                          '  from train.cli import run_main\n  run_main(main)\n'),
  }
  for rel, source in allowed.items():
    assert check(rel, source) == [], (rel, check(rel, source))


# run in a fresh interpreter: imports every library module (paradigms, sample) and reports which
# banned top-level modules ended up in sys.modules, each with the innermost module outside it
# whose import first pulled it in
_PROBE = r'''
import builtins, importlib, json, sys
modules, heavy = json.loads(sys.argv[1]), tuple(json.loads(sys.argv[2]))
top = lambda m: next((h for h in heavy if m == h or m.startswith(h + '.')), None)
importer, real_import = {}, builtins.__import__

def spy(name, globals=None, locals=None, fromlist=(), level=0):
  who, before = (globals or {}).get('__name__') or '?', set(sys.modules)
  try:
    return real_import(name, globals, locals, fromlist, level)
  finally:
    for h in {top(m) for m in set(sys.modules) - before} - {None, top(who)} - set(importer):
      importer[h] = who

builtins.__import__ = spy
for m in modules:
  importlib.import_module(m)
  for h in {top(n) for n in sys.modules} - {None} - set(importer):
    importer[h] = m
print(json.dumps(importer))
'''


def test_library_layers_import_nothing_heavy():
  modules = []
  for top in ('paradigms', 'sample'):
    for p in sorted((ROOT / top).rglob('*.py')):
      name = module_name(p.relative_to(ROOT))
      if '__pycache__' not in p.parts and name not in CLI_MODULES:
        modules.append(name)
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-c', _PROBE, json.dumps(modules), json.dumps(HEAVY)],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  leaked = json.loads(proc.stdout.strip().splitlines()[-1])
  assert not leaked, 'library layers pulled in heavy modules:\n' + '\n'.join(
      f'  {m}: first imported by {who}' for m, who in leaked.items())
