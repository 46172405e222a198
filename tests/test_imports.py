"""The library's import graph (docs/design.md): attnlab/ never imports
experiments/ or configs/, and no attnlab module imports itself back through
others, at module level or inside functions (a hidden circle)."""
import ast
import os

from helpers import ROOT


def imports_of(path):
  """Every attnlab/experiments/configs module a file imports, anywhere in it."""
  found = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      found.add(node.module)
      found.update(f"{node.module}.{a.name}" for a in node.names)
  return {m for m in found if m.split(".")[0] in ("attnlab", "experiments", "configs")}


def library_graph():
  graph = {}
  for d, _, files in os.walk(os.path.join(ROOT, "attnlab")):
    for f in files:
      if f.endswith(".py"):
        rel = os.path.relpath(os.path.join(d, f), ROOT)[:-3].replace(os.sep, ".")
        graph[rel.removesuffix(".__init__")] = imports_of(os.path.join(d, f))
  return {m: {i for i in deps if i in graph and i != m} | {i for i in deps if i not in graph}
          for m, deps in graph.items()}


def test_library_never_imports_experiments_or_configs():
  bad = {m: sorted(i for i in deps if not i.startswith("attnlab"))
         for m, deps in library_graph().items()}
  assert not any(bad.values()), {m: v for m, v in bad.items() if v}


def test_no_import_circles_in_the_library():
  graph = {m: {i for i in deps if i.startswith("attnlab.")} for m, deps in library_graph().items()}
  graph = {m: {i for i in deps if i in graph} for m, deps in graph.items()}
  state, circle = {}, []

  def visit(m, path):
    state[m] = "open"
    for n in sorted(graph[m]):
      if state.get(n) == "open":
        circle.append(path[path.index(n):] + [n] if n in path else [m, n])
      elif n not in state:
        visit(n, path + [n])
    state[m] = "done"
  for m in sorted(graph):
    if m not in state:
      visit(m, [m])
  assert not circle, circle


def test_no_experiment_imports_another():
  """What two objectives share lives in attnlab/ (the image backbones,
  frozen-feature evaluations), never in a sibling experiment; tables.py,
  which reads experiments' runs, is no experiment."""
  folder = os.path.join(ROOT, "experiments")
  bad = {}
  for f in sorted(os.listdir(folder)):
    if f.endswith(".py") and f not in ("__init__.py", "tables.py"):
      siblings = sorted(m for m in imports_of(os.path.join(folder, f))
                        if m.startswith("experiments"))
      if siblings:
        bad[f] = siblings
  assert not bad, bad


def test_every_experiment_is_built_on_the_contract():
  """Each experiments/<name>.py subclasses attnlab.experiment.Experiment and
  writes the methods the contract leaves to it."""
  import importlib
  from attnlab import experiment
  required = ("init", "loss", "abstract_batch", "train_iter", "evaluate")
  folder = os.path.join(ROOT, "experiments")
  names = [f[:-3] for f in sorted(os.listdir(folder))
           if f.endswith(".py") and f not in ("__init__.py", "tables.py")]
  assert len(names) >= 7, names
  for name in names:
    cls = importlib.import_module(f"experiments.{name}").Experiment
    assert issubclass(cls, experiment.Experiment), name
    missing = [m for m in required if getattr(cls, m) is getattr(experiment.Experiment, m)]
    assert not missing, (name, missing)
    assert cls.capabilities <= {"sample", "translate", "attend", "caption", "retrieve"}, name
