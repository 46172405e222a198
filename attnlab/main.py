"""Command line: `python -m attnlab.main COMMAND ...` (launch.sh calls this).

  train   --config CONFIG[:args] --workdir DIR [--config.KEY=VALUE ...]
  prepare --config CONFIG[:args]          fetch and prepare the data only
  sample  WORKDIR [--prompt P --length N --temperature T --seed S]
  eval    WORKDIR [--split validation|test]  validation metrics; with test, the
          final test report and its figures (as at the end of training)
  compile --config CONFIG[:args] --devices N | --tpu SLICE [--slices K] [--config.KEY=VALUE ...]
          ahead-of-time: lower and compile the train step for N devices
          (faked on the CPU), print memory per device and FLOPs per step;
          --tpu v5e-256 (v4-N, v5e-N, v5p-N, v6e-N): compiled by the TPU
          compiler for that slice (libtpu, installed on first use): HBM per
          chip against the chip, the compiler's step-time estimate, MFU
  average WORKDIR [--last N] [--out DIR]   mean of the last N checkpoints'
          parameters as a new run (Vaswani et al.: 5 for base, 20 for big)
  attend  WORKDIR IMAGE...   a ViT run's attention maps of your images (plots/)
  caption WORKDIR IMAGE...   a captioning run's caption of each image, and each
          word's attention over it (plots/caption_NAME.png)
  retrieve WORKDIR --text T | --image FILE [--split S] [--top K]   a CLIP run's
          nearest images of a text (a PNG grid in plots/) or captions of an image
  tpu     NAME --zone Z [--project P] [--accelerator SLICE] [--dry_run] train ARGS...
          run on every worker of a TPU VM; with --accelerator (v5e-256, ...)
          create it, after compiling the config for it: refused if it does not fit

Every config problem is one line on stderr and exit code 2, before any
compile.
"""
import importlib
import json
import os
import shlex
import subprocess
import sys

from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

from attnlab import config as config_lib
from attnlab import storage

USAGE = __doc__


class UsageError(Exception):
  pass


def fail(message, code=2):
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def _setup_jax():
  """Compilation cache and multi-host start, before any JAX computation."""
  import jax
  from attnlab import sharding
  cache = os.environ.get("JAX_COMPILATION_CACHE_DIR",
                         os.path.join(os.path.expanduser("~"), ".cache",
                                      "attnlab", "jax"))
  jax.config.update("jax_compilation_cache_dir", cache)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  sharding.initialize_distributed()
  return jax


def parse_config(argv, workdir_here=True):
  """`--config FILE[:arg] --workdir DIR --config.K=V ...` -> (config, workdir);
  workdir_here=False: the workdir is for other machines (`tpu`), so only the
  name of its scheme is checked here, not that this one can read it.

  ml_collections' config_flags reads the file (`get_config(arg)`, as
  big_vision's configs) and applies the overrides, each parsed as the type
  the config declared; whatever it refuses is said here in one line.
  """
  spec = _config_spec(argv)
  if spec is None:
    fail("--config is required: e.g. --config configs/charlm.py")
  if not os.path.isfile(spec.partition(":")[0]):
    fail(f"--config {spec}: no such file; give a config file such as configs/charlm.py")
  bare = next((a for a in argv if a.startswith("--config.") and "=" not in a), None)
  if bare:
    fail(f"{bare}: write overrides as --config.KEY=VALUE")
  values = _config_flags(argv)
  try:
    rest = values(["attnlab", *argv])[1:]
  except Exception as e:  # one line for whatever the file or an override raised
    if isinstance(e, flags.Error) and not isinstance(e, flags.IllegalFlagValueError):
      # a flag that is not ours, or one without its value
      rest = [a for a in argv if a.startswith("--") and not a.startswith(
          ("--config", "--workdir"))] or fail(_one_line(e, ""))
    else:
      fail(_refusal(e, argv, spec, values["config"].value))
  if rest:
    fail(f"unexpected argument {rest[0]!r}: use --config FILE[:args], --workdir "
         "DIR and --config.KEY=VALUE")
  config, workdir = values.config, values.workdir
  if workdir:
    try:
      config_lib.check_served(workdir, here=workdir_here)
    except config_lib.ConfigError as e:
      fail(str(e))
  return config, workdir


def _config_flags(argv, overrides=True):
  values = flags.FlagValues()
  config_flags.DEFINE_config_file(
      "config", None, "CONFIG[:args]", flag_values=values, lock_config=False,
      sys_argv=["attnlab", *(argv if overrides else
                             [a for a in argv if not a.startswith("--config.")])])
  flags.DEFINE_string("workdir", None, "the run's folder", flag_values=values)
  return values


def _config_spec(argv):
  for i, a in enumerate(argv):
    if a == "--config":
      return argv[i + 1] if i + 1 < len(argv) else fail("--config needs a value")
    if a.startswith("--config="):
      return a.partition("=")[2]
  return None


def _refusal(e, argv, spec, config):
  """One line for what loading the config file or applying an override
  raised: get_config's own ConfigError, an override naming no key or a value
  that does not parse as the key's type, else the file's own exception."""
  cause = e
  while cause.__cause__ or cause.__context__:  # config_flags re-raises get_config's errors
    cause = cause.__cause__ or cause.__context__
  if isinstance(cause, config_lib.ConfigError):
    return str(cause)
  if isinstance(e, flags.IllegalFlagValueError) and not str(e).startswith("flag --config="):
    return str(_not_parsed(e, config))
  unknown = _unknown_key(argv) if isinstance(e, (AttributeError, KeyError)) else None
  return str(unknown) if unknown else f"--config {spec}: {type(cause).__name__}: {_one_line(cause, '')}"


def _unknown_key(argv):
  """The ConfigError of the first override that names no key of the config
  (config_flags' own error does not say which); None when each names one,
  or when the file itself does not load."""
  values = _config_flags(argv, overrides=False)
  try:
    values(["attnlab", *[a for a in argv if not a.startswith("--config.")]])
  except Exception:  # the file itself: said by the caller
    return None
  for a in argv:
    if a.startswith("--config."):
      key = a.partition("=")[0][len("--config."):]
      node, parts = values.config, key.split(".")
      for n, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
          where = ".".join(parts[:n]) or "config"
          keys = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
          return config_lib.ConfigError(
              key, "unknown key", f"{where} has keys {keys}" if keys
              else f"{where} is not a group of keys")
        node = node[part]
  return None


def _not_parsed(e, config):
  """config_flags' "flag --config.K=V: <why>" as the key, the value and the
  type the config declared, with an example."""
  import re
  found = re.match(r"flag --config\.([\w.]+)=(.*?): ", str(e))
  if not found or config is None:
    return config_lib.ConfigError("config", _one_line(e, ""), "")
  key, text = found.groups()
  old = config
  for part in key.split("."):
    old = old[part]
  return config_lib.ConfigError(key, f"{text!r} is not a {type(old).__name__}",
                                f"e.g. --config.{key}={old!r}")


def _one_line(e, context):
  text = " ".join(str(e).split())
  return f"{context}: {text}" if context else text


def experiment_module(config):
  name = config.get("experiment", None)
  if not name:
    fail("config.experiment: missing; the config must name its experiment")
  # "translate" is experiments/translate.py; a dotted name is any module
  # (an experiment of your own package: "mypackage.my_objective").
  module = name if "." in name else f"experiments.{name}"
  try:
    return importlib.import_module(module)
  except ModuleNotFoundError as e:
    if e.name and not module.startswith(e.name):
      raise  # the experiment exists but imports something missing
    fail(f"config.experiment: no module {module}; use an experiment of "
         "experiments/ or an importable dotted module name")


def validate(config, jax, device_count=None):
  module = experiment_module(config)
  try:
    config_lib.validate_common(config, device_count or jax.device_count())
    module.Experiment.validate(config)
  except config_lib.ConfigError as e:
    fail(str(e))
  return module


def load_run(workdir):
  path = storage.path(workdir) / "config.json"
  if not path.exists():
    fail(f"{workdir} has no config.json: give the --workdir of a training run")
  return config_lib.upgrade(ml_collections.ConfigDict(json.loads(path.read_text())))


# What a run writes into its workdir besides checkpoints/ (experiments
# included: vocabularies, plots, samples, reports).
RUN_FILES = ("config.json", "metrics.jsonl", "tb", "vocab.json", "tokenizer.model", "words.json",
             "plots", "samples", "bleu.json", "test.json")


def _flat(tree, prefix=""):
  if not isinstance(tree, dict):
    return {prefix[:-1]: tree}
  return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}


def has_checkpoint(workdir):
  from attnlab import checkpoint
  return bool(checkpoint.checkpoint_steps(workdir))


def claim_workdir(config, workdir):
  """A workdir holds a run once it has a checkpoint: then only the same
  config continues it. Before that (a run that failed or was killed before
  its first save) it is not a run yet: a new start takes it, and the files
  of the earlier attempt are kept beside it as NAME.prev (never reused: a
  vocabulary of other data would silently corrupt the new run)."""
  import jax
  if has_checkpoint(workdir):
    old = _flat(json.loads(load_run(workdir).to_json()))
    new = _flat(json.loads(config.to_json_best_effort()))
    differ = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if differ:
      k = differ[0]
      fail(f"{workdir} holds a run with another config ({len(differ)} key(s) "
           f"differ, e.g. {k}: run {old.get(k)!r}, now {new.get(k)!r}): use a new "
           "--workdir, or the run's config (its config.json) to resume")
    return
  if jax.process_index() == 0:
    for name in RUN_FILES:
      path = storage.path(workdir) / name
      if path.exists():
        prev = path.parent / f"{name}.prev"
        if prev.is_dir():
          prev.rmtree()
        path.replace(prev)
        print(f"{workdir} has no checkpoint yet: its earlier {name} is now {name}.prev",
              flush=True)
  from attnlab import checkpoint
  checkpoint.sync("attnlab_claim_workdir")


def build(module, config, workdir):
  """The experiment; data problems found while building it (a vocabulary
  too small for the text, ...) are one line and exit 2, like config ones."""
  try:
    return module.Experiment(config, workdir)
  except config_lib.ConfigError as e:
    fail(str(e))


def make_trainer(config, exp, workdir, devices=None):
  """The trainer; rules that fit no parameter of the model (a regex that
  matches nothing, ...) are one line and exit 2, before any compile."""
  from attnlab import train
  try:
    return train.Trainer(config, exp, workdir, devices)
  except config_lib.ConfigError as e:
    fail(str(e))


# --- commands ----------------------------------------------------------------
def cmd_train(argv):
  config, workdir = parse_config(argv)
  if not workdir:
    fail("--workdir is required: e.g. --workdir runs/charlm")
  jax = _setup_jax()
  module = validate(config, jax)
  from attnlab import train
  from attnlab.data import catalog
  try:
    catalog.prepare(config.data)
  except config_lib.ConfigError as e:
    fail(str(e))
  claim_workdir(config, workdir)
  exp = build(module, config, workdir)
  train.write_config(config, workdir)
  trainer = make_trainer(config, exp, workdir)
  from attnlab import checkpoint
  try:
    state = trainer.train()
  except train.NonFiniteError as e:
    fail(str(e), code=1)
  except (checkpoint.MismatchError, config_lib.ConfigError) as e:
    fail(str(e))  # e.g. an init_from run of another model
  if int(state["step"]) < config.total_steps:
    return  # stopped by a signal: the test split waits for the finished run
  if config.get("final_test", True):
    trainer.finish(state)
  else:
    print(f"final_test=False: the {config.data.test_split} split was not "
          f"read; read it once with: ./launch.sh eval {workdir} --split test", flush=True)


def cmd_prepare(argv):
  config, _ = parse_config(argv)
  from attnlab.data import catalog
  try:
    catalog.prepare(config.data)
  except config_lib.ConfigError as e:
    fail(str(e))


def _restore(workdir):
  jax = _setup_jax()
  config = load_run(workdir)
  module = validate(config, jax)
  exp = build(module, config, workdir)
  trainer = make_trainer(config, exp, workdir)
  from attnlab import checkpoint
  try:
    state = trainer.restore_params()
  except checkpoint.MismatchError as e:
    fail(str(e))
  if state is None:
    fail(f"{workdir} has no readable checkpoint yet: train first")
  return config, exp, trainer, state


def cmd_sample(argv):
  values = flags.FlagValues()
  flags.DEFINE_string("prompt", None, "language models: text to start from",
                      flag_values=values)
  flags.DEFINE_integer("length", None, "characters to sample", flag_values=values)
  flags.DEFINE_float("temperature", None, "0 = greedy", flag_values=values)
  flags.DEFINE_integer("seed", 0, "sampling seed", flag_values=values)
  flags.DEFINE_string("text", None, "translation: source sentences to translate "
                      "(one per line; \\n separates them)", flag_values=values)
  workdir = _workdir_arg(argv, values)
  config = load_run(workdir)
  kind = experiment_module(config).Experiment
  if "translate" in kind.capabilities:
    if not (values.text or "").strip() or values.prompt is not None:
      fail(f"{workdir} is a translation run: give the source text to translate, "
           "e.g. ./launch.sh sample WORKDIR --text 'Wie geht es dir?'")
  elif "sample" not in kind.capabilities:
    fail(f"{workdir} is a {config.experiment} run, which has nothing to sample: "
         f"./launch.sh eval {workdir} shows its held-out results")
  elif values.text is not None:
    fail("--text is for translation runs: give a language model --prompt")
  config, exp, _, state = _restore(workdir)
  if values.text is not None:
    sentences = [t for t in values.text.replace("\\n", "\n").split("\n") if t.strip()]
    unknown = exp.tokenizer.unknown_chars("".join(sentences))
    if unknown:
      print(f"warning: the vocabulary has no piece for {unknown}: read as unknown",
            file=sys.stderr)
    for source, target in zip(sentences, exp.translate(state["params"], sentences)):
      print(f"SRC  {source}\nHYP  {target}")
    return
  s = config.sample
  temperature = s.temperature if values.temperature is None else values.temperature
  if temperature < 0:
    fail("--temperature must be >= 0 (0 is greedy)")
  prompt = exp.prompt if values.prompt is None else values.prompt.replace("\\n", "\n")
  length = s.length if values.length is None else values.length
  if length < 1:
    fail(f"--length {length}: sample at least 1 character")
  positions = config.model.get("max_len", 0)  # a GPT's learned positions
  if positions and len(prompt) + length > positions:
    fail(f"--prompt of {len(prompt)} + --length {length} characters exceed the "
         f"model's {positions} positions: sample fewer")
  unknown = exp.unknown_chars(prompt)
  if unknown:
    fail(f"--prompt has characters the run's training text never shows: {unknown}; "
         f"remove them (its characters are in {os.path.join(workdir, 'vocab.json')})")
  print(exp.sample(state["params"], prompt, length, temperature, seed=values.seed))


def cmd_eval(argv):
  values = flags.FlagValues()
  flags.DEFINE_enum("split", "validation", ["validation", "test"], "validation: the "
                    "metrics training reports; test: the final report (read it once)",
                    flag_values=values)
  workdir = _workdir_arg(argv, values)
  _, _, trainer, state = _restore(workdir)
  if values.split == "test":
    trainer.finish(state)
  else:
    trainer.evaluate(state, int(state["step"]))
  trainer.writer.close()


def _workdir_and_pictures(argv, command, kind):
  """`WORKDIR IMAGE...` -> (workdir, [(path, encoded image)]), each file
  checked to be an image before anything loads."""
  values = flags.FlagValues()
  try:
    rest = values(["attnlab"] + argv)[1:]
  except flags.Error as e:
    fail(_one_line(e, ""))
  if len(rest) < 2:
    fail(f"give a WORKDIR ({kind}) and one or more image files: "
         f"./launch.sh {command} WORKDIR photo.jpg ...")
  from PIL import UnidentifiedImageError
  pictures = []
  for path in rest[1:]:
    try:
      pictures.append((path, _image_bytes(path)))
    except (OSError, UnidentifiedImageError, SyntaxError) as e:
      fail(f"{path} is not a readable image ({type(e).__name__}): give PNG or JPEG files")
  return rest[0], pictures


def cmd_attend(argv):
  """attend WORKDIR IMAGE...: the run's attention maps of your images."""
  workdir, pictures = _workdir_and_pictures(argv, "attend", "a ViT run")
  config = load_run(workdir)
  if "attend" not in experiment_module(config).Experiment.capabilities:
    fail(f"{workdir} is a {config.experiment} run, which has no attention maps of images")
  _, exp, trainer, state = _restore(workdir)
  try:
    written = exp.attend(state, pictures, storage.path(workdir) / "plots", trainer.writer,
                         int(state["step"]))
  except ValueError as e:
    fail(str(e))
  trainer.writer.close()
  for path in written:
    print(path)


def cmd_caption(argv):
  """caption WORKDIR IMAGE...: a captioning run's caption of each image and
  the attention of each of its words (a PNG in plots/)."""
  workdir, pictures = _workdir_and_pictures(argv, "caption", "a captioning run")
  config = load_run(workdir)
  if "caption" not in experiment_module(config).Experiment.capabilities:
    fail(f"{workdir} is a {config.experiment} run: captions need a run of configs/caption.py")
  _, exp, trainer, state = _restore(workdir)
  found = exp.caption_images(state, pictures, storage.path(workdir) / "plots", trainer.mesh,
                             trainer.writer, int(state["step"]))
  trainer.writer.close()
  for name, text, path in found:
    print(f"{name}: {text}\n  {path}")


def cmd_retrieve(argv):
  """retrieve WORKDIR --text T | --image FILE [--split S] [--top K]: a CLIP
  run's nearest images of a text (a PNG grid) or nearest captions of an image."""
  values = flags.FlagValues()
  flags.DEFINE_string("text", None, "a text: the split's images nearest it", flag_values=values)
  flags.DEFINE_string("image", None, "an image file: the split's captions nearest it",
                      flag_values=values)
  flags.DEFINE_string("split", "validation", "the images and captions searched",
                      flag_values=values)
  flags.DEFINE_integer("top", 10, "how many to show", flag_values=values)
  workdir = _workdir_arg(argv, values)
  if (values.text is None) == (values.image is None):
    fail("give one of --text 'a red heart' or --image FILE: "
         "./launch.sh retrieve WORKDIR --text 'a red heart'")
  if values.top < 1:
    fail(f"--top={values.top}: give a positive count")
  config = load_run(workdir)
  if "retrieve" not in experiment_module(config).Experiment.capabilities:
    fail(f"{workdir} is a {config.experiment} run: retrieval needs a CLIP run")
  image = None
  if values.image is not None:
    from PIL import UnidentifiedImageError
    try:
      image = _image_bytes(values.image)
    except (OSError, UnidentifiedImageError, SyntaxError) as e:
      fail(f"{values.image} is not a readable image ({type(e).__name__}): give a PNG or JPEG")
  if not values.text and image is None:
    fail("--text is empty: give the words to search for")
  config, exp, trainer, state = _restore(workdir)
  split = {"validation": config.data.eval_split, "test": config.data.test_split}.get(
      values.split, values.split)
  found, path = exp.retrieve(state, trainer.mesh, split, text=values.text, image=image,
                             top=values.top, folder=storage.path(workdir) / "plots")
  trainer.writer.close()
  for similarity, caption in found:
    print(f"{similarity:+.3f}  {caption}")
  if path:
    print(path)


def _workdir_arg(argv, values):
  try:
    rest = values(["attnlab"] + argv)[1:]
  except flags.Error as e:
    fail(_one_line(e, ""))
  if len(rest) != 1:
    fail("give exactly one WORKDIR (the --workdir of a training run)")
  try:
    config_lib.check_served(rest[0])
  except config_lib.ConfigError as e:
    fail(str(e))
  return rest[0]


def _image_bytes(path):
  """The bytes of an image file (local or cloud), checked to be an image."""
  import io
  from PIL import Image
  data = storage.path(path).read_bytes()
  with Image.open(io.BytesIO(data)) as img:
    img.verify()
  return data


def cmd_tpu(argv):
  values = flags.FlagValues()
  flags.DEFINE_string("zone", None, "TPU zone", flag_values=values)
  flags.DEFINE_string("project", None, "GCP project", flag_values=values)
  flags.DEFINE_string("accelerator", None, "the slice to create (v5e-256, v4-32, ...): "
                      "the config is compiled for it first and refused if it does not "
                      "fit; without it, NAME is a TPU VM that exists", flag_values=values)
  flags.DEFINE_bool("dry_run", False, "print the commands only",
                    flag_values=values)
  split = argv.index("train") if "train" in argv else len(argv)
  try:
    rest = values(["attnlab"] + argv[:split])[1:]
  except flags.Error as e:
    fail(_one_line(e, ""))
  train_args = argv[split + 1:]
  if len(rest) != 1 or not values.zone or not train_args:
    fail("usage: launch.sh tpu NAME --zone ZONE [--project P] [--accelerator SLICE] "
         "[--dry_run] train CONFIG --workdir DIR [...]")
  # A bad config fails here, not on the pod (`train CONFIG` as in launch.sh).
  config, _ = parse_config(train_args if train_args[0].startswith("-")
                           else ["--config"] + train_args, workdir_here=False)
  if values.accelerator:
    # The step compiled by the TPU compiler for the slice about to be
    # booked: a config that does not fit it is refused before anything is
    # created.
    report = compile_for_tpu(config, values.accelerator)
    if not report["fits"]:
      fail(f"not creating {rest[0]}: the config {report['verdict']} of "
           f"{values.accelerator}; use a larger slice, or shard the state "
           "(--config.param_sharding), scan + remat the layers, or accumulate microbatches")
  from attnlab import tpu_vm
  for cmd in tpu_vm.commands(rest[0], values.zone, values.project, train_args,
                             values.accelerator):
    print(shlex.join(cmd), flush=True)
    if not values.dry_run:
      subprocess.run(cmd, check=True)


def _take_option(argv, name, kind=str):
  """(value or None, argv without `name VALUE`) for `--name VALUE` or `--name=VALUE`."""
  for i, a in enumerate(argv):
    if a == name or a.startswith(name + "="):
      if "=" in a:
        text, rest = a.partition("=")[2], argv[:i] + argv[i + 1:]
      elif i + 1 < len(argv):
        text, rest = argv[i + 1], argv[:i] + argv[i + 2:]
      else:
        fail(f"{name} needs a value")
      try:
        return kind(text), rest
      except ValueError:
        fail(f"{name} {text!r}: give a {kind.__name__}, e.g. {name} 16")
  return None, argv


def cmd_compile(argv):
  """A pod config known to fit before a pod is booked: the full-size train
  step compiled ahead of time, no data read, nothing allocated. With
  `--devices N`, for N fake CPU devices (XLA:CPU's program); with `--tpu
  SLICE [--slices K]`, for that TPU slice by the TPU compiler (libtpu),
  which also estimates the step's time."""
  devices, argv = _take_option(argv, "--devices", int)
  slice_name, argv = _take_option(argv, "--tpu")
  slices, argv = _take_option(argv, "--slices", int)
  if devices is not None and slice_name is not None:
    fail("--devices and --tpu together: give --devices N (fake CPU devices) or "
         "--tpu SLICE (a TPU slice, e.g. v5e-256), not both")
  if slices is not None and slice_name is None:
    fail("--slices needs --tpu: e.g. --tpu v5e-256 --slices 2")
  if devices is not None and devices < 1:
    fail(f"--devices {devices}: give a positive number of devices")
  if argv and not argv[0].startswith("-"):
    argv = ["--config"] + argv
  config, _ = parse_config(argv)
  if slice_name is None:
    # Before JAX starts: N CPU devices stand in for the accelerators.
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    jax.config.update("jax_num_cpu_devices", devices or 8)
    report = _compile(config, devices or 8)
  else:
    report = compile_for_tpu(config, slice_name, slices or 1)
  if report.get("fits") is False:
    sys.exit(1)


def _compile(config, devices, tpu_slice=None):
  """The trainer's step compiled for `devices` (cost.compile_step) for a
  config checked here; what the trainer refuses (a sharding rule that fits
  no parameter, ...) is one line and exit 2."""
  import jax
  from attnlab import cost
  from attnlab import train
  # The compile time printed is a compile's, never a read of the cache.
  jax.config.update("jax_enable_compilation_cache", False)
  module = validate(config, jax, len(devices) if tpu_slice else devices)
  try:
    with train.abstract_step(module, config, devices if tpu_slice else None) as step:
      return cost.compile_step(*step, config, tpu_slice)
  except config_lib.ConfigError as e:
    fail(str(e))


def compile_for_tpu(config, slice_name, slices=1):
  """`compile --tpu`: the step compiled by libtpu for the slice's abstract
  chips; every problem with the request is one line and exit 2 before it."""
  from attnlab import tpu
  try:
    tpu_slice = tpu.parse_slice(slice_name, slices)
  except tpu.SliceError as e:
    fail(str(e))
  # The config must suit the slice (its mesh, its batch) before the
  # compiler is fetched or started.
  os.environ["JAX_PLATFORMS"] = "cpu"  # the host's own backend; the TPU is abstract
  import jax
  validate(config, jax, tpu_slice.chips)
  try:
    chips = tpu.abstract_chips(tpu_slice, say=lambda m: print(m, file=sys.stderr, flush=True))
  except tpu.SliceError as e:
    fail(str(e))
  return _compile(config, chips, tpu_slice)


def cmd_average(argv):
  values = flags.FlagValues()
  flags.DEFINE_integer("last", 5, "how many of the newest checkpoints", flag_values=values)
  flags.DEFINE_string("out", None, "workdir of the averaged run (default "
                      "WORKDIR_avgN)", flag_values=values)
  workdir = _workdir_arg(argv, values)
  jax = _setup_jax()
  config = load_run(workdir)
  module = validate(config, jax)
  from attnlab import checkpoint
  from attnlab import train
  trainer = make_trainer(config, module.Experiment(config, workdir), workdir)
  steps = trainer.ckpt.steps()[-values.last:]
  if values.last < 1 or len(steps) < values.last:
    fail(f"{workdir} has {len(steps)} checkpoints, --last {values.last} asked: "
         "use a smaller --last, or train with a larger config.keep_ckpts")
  out = values.out or f"{workdir.rstrip('/')}_avg{values.last}"
  train.write_config(config, out)
  checkpoint.write_average([trainer.restore_params(step) for step in steps], out)
  print(f"averaged checkpoints {steps} of {workdir} into {out}; evaluate it with "
        f"./launch.sh eval {out}")


COMMANDS = {"train": cmd_train, "prepare": cmd_prepare, "sample": cmd_sample,
            "attend": cmd_attend, "caption": cmd_caption, "retrieve": cmd_retrieve, "eval": cmd_eval, "average": cmd_average, "compile": cmd_compile,
            "tpu": cmd_tpu}


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  if not argv or argv[0] not in COMMANDS:
    print(USAGE, file=sys.stderr)
    sys.exit(2)
  logging.set_verbosity(logging.WARNING)
  COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
  main()
