"""The report: markdown tables, PNG plots and one JSON record per experiment.

Each experiment returns a `Section`; `write_section` puts `<out>/<name>.md` and
`<out>/<name>.json` beside the plots the experiment drew, and `write_readme` joins the sections
present, in registry order, into `<out>/README.md`.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
from typing import Any, Sequence


@dataclasses.dataclass
class Section:
  """One experiment's result: markdown (tables, findings) and everything needed to redo it."""
  name: str
  title: str
  markdown: str
  results: dict  # rows, resolved configs, seeds, compute: written as JSON
  plots: Sequence[str] = ()  # file names (in the report folder) the markdown links


def fmt(v, spec: str = '.3g') -> str:
  """A table cell: numbers with `spec`, None / NaN as '-'."""
  if v is None or (isinstance(v, float) and math.isnan(v)):
    return '-'
  if isinstance(v, (int, float)) and not isinstance(v, bool):
    return format(v, spec)
  return str(v)


def table(rows: Sequence[dict], columns: Sequence[tuple]) -> str:
  """A markdown table. columns: (key, header) or (key, header, format spec)."""
  head = '| ' + ' | '.join(c[1] for c in columns) + ' |'
  rule = '|' + '|'.join('---' for _ in columns) + '|'
  body = ['| ' + ' | '.join(fmt(r.get(c[0]), *c[2:]) for c in columns) + ' |' for r in rows]
  return '\n'.join([head, rule, *body])


def compute_line(runs) -> str:
  """The honesty line under a table: every model's parameters and training FLOPs."""
  parts = [f'{r.name} {r.n_params:,} params / {r.train_flops:.2e} FLOPs' for r in runs]
  return ('Parameters and training compute: ' + '; '.join(parts)
          + ' (FLOPs analytic: 6 N + attention per processed token).')


def pyplot():
  """matplotlib.pyplot on the Agg backend, or an ImportError saying what to install."""
  try:
    import matplotlib
  except ImportError as e:
    raise ImportError("the arena's plots need matplotlib: pip install -e '.[arena]'") from e
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  return plt


def plot(path: str, series: dict[str, tuple], *, xlabel: str, ylabel: str, title: str,
         logx: bool = False, logy: bool = False, style: str | dict = 'o-',
         hlines: dict | None = None,
         annotate: dict[str, Sequence[str]] | None = None,
         xticks: Sequence[float] | None = None) -> str:
  """Lines (or points, style='o') of {label: (xs, ys)} into a PNG at `path`; returns its name.

  `hlines` {label: y} draws dashed reference levels; `annotate` {label: texts} labels the
  points of that series; `style` may be {label: style} (missing labels: 'o-'); `xticks` fixes
  the x ticks (e.g. whole numbers)."""
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
  for label, (xs, ys) in series.items():
    ax.plot(xs, ys, style if isinstance(style, str) else style.get(label, 'o-'), label=label,
            markersize=4)
    for x, y, text in zip(xs, ys, (annotate or {}).get(label, ())):
      ax.annotate(text, (x, y), fontsize=7, xytext=(3, 3), textcoords='offset points')
  for label, y in (hlines or {}).items():
    ax.axhline(y, linestyle='--', linewidth=1, color='gray')
    ax.annotate(label, (0, y), xycoords=('axes fraction', 'data'), fontsize=7, xytext=(2, 2),
                textcoords='offset points')  # at the left edge, whatever the x scale
  ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
  if logx:
    ax.set_xscale('log')
  if logy:
    ax.set_yscale('log')
  if xticks is not None:
    ax.set_xticks(list(xticks))
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return os.path.basename(path)


def bars(path: str, panels: dict[str, dict[str, float]], *, title: str) -> str:
  """Horizontal bar charts side by side, one panel per {panel title: {label: value}} (the same
  labels in every panel, top to bottom), into a PNG at `path`; returns its name. None / NaN
  values are left blank."""
  plt = pyplot()
  labels = list(next(iter(panels.values())))
  size = (2.2 * len(panels) + 2.0, 0.35 * len(labels) + 1.4)
  fig, axes = plt.subplots(1, len(panels), figsize=size, dpi=110, sharey=True, squeeze=False)
  for ax, (name, values) in zip(axes[0], panels.items()):
    ys = [values.get(k) for k in labels]
    ys = [math.nan if v is None else v for v in ys]
    ax.barh(range(len(labels)), ys, color=[f'C{i}' for i in range(len(labels))])
    ax.set_title(name, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(axis='x', alpha=0.3)
  axes[0][0].set_yticks(range(len(labels)), labels)
  axes[0][0].invert_yaxis()
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return os.path.basename(path)


def pareto(points: Sequence[tuple[float, float]]) -> list[int]:
  """Indices of the frontier of (speed, loss) points: no other point is faster and better."""
  order = sorted(range(len(points)), key=lambda i: (-points[i][0], points[i][1]))
  front, best = [], math.inf
  for i in order:
    if points[i][1] < best:
      front.append(i)
      best = points[i][1]
  return front


def write_section(out: str, section: Section, meta: dict) -> None:
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, f'{section.name}.md'), 'w') as f:
    f.write(f'## {section.title}\n\n{section.markdown.strip()}\n')
  with open(os.path.join(out, f'{section.name}.json'), 'w') as f:
    json.dump({'meta': meta, **section.results}, f, indent=1, default=_jsonable)


def machine() -> str:
  import jax
  return f'{platform.machine()} {os.cpu_count()} cores, JAX {jax.__version__} on {jax.devices()[0].device_kind}'


def training_time(runs_dir: str, total_s: float | None = None) -> str:
  """One line: how many models the budget trained and the trainer's wall time for all of them
  (from each run's arena.json), and `total_s`, the whole `all` command's wall time, when it
  trained every model itself (a run that reused models says nothing of a first run's cost)."""
  import glob
  seconds = []
  for path in sorted(glob.glob(os.path.join(runs_dir, '*', 'arena.json'))):
    with open(path) as f:
      seconds.append(json.load(f).get('seconds', 0.0))
  line = (f'Training the {len(seconds)} models took {sum(seconds) / 60:.0f} min of trainer wall '
          'time on this machine')
  if total_s is None:
    return line + '; a first `all` adds the measurement times below.'
  return line + (f'; the whole `all`, training and measuring from scratch, took '
                 f'{total_s / 60:.0f} min.')


def kept_training_line(path: str) -> str | None:
  """The 'Training the N models took ...' line of an existing README (a one-experiment rerun
  keeps the first full run's cost), or None."""
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return next((l.strip() for l in f if l.startswith('Training the ')), None)


def write_readme(out: str, order: Sequence[str], budget: str, intro: str,
                 command: str = '') -> str:
  """`<out>/README.md` from the section files present, in `order`; `command` is the one that
  regenerated it (default `python -m arena all ...`)."""
  command = command or f'python -m arena all --budget {budget} --out {out}'
  parts = [f'# Arena report ({budget} budget)\n', intro.strip() + '\n',
           f'Regenerated {datetime.date.today().isoformat()} by `{command}` on {machine()}.\n']
  timing = []
  for name in order:
    path = os.path.join(out, f'{name}.md')
    if os.path.exists(path):
      with open(path) as f:
        parts.append(f.read())
      with open(os.path.join(out, f'{name}.json')) as f:
        meta = json.load(f).get('meta', {})
      timing.append(f'{name} {meta.get("seconds", 0) / 60:.1f} min')
  parts.insert(3, 'Wall time of the last run of each experiment (training included only where it '
               'trained): ' + ', '.join(timing) + '.\n')
  path = os.path.join(out, 'README.md')
  with open(path, 'w') as f:
    f.write('\n'.join(parts))
  return path


def _jsonable(x: Any):
  import numpy as np
  if isinstance(x, np.generic):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  if hasattr(x, 'to_dict'):
    return x.to_dict()
  return str(x)
