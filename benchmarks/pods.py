"""Every pod recipe compiled by the TPU compiler for the slice its docstring
names: one table of HBM per chip, fit, compile time, the compiler's
estimated step time and the MFU it implies.

  python -m benchmarks.pods [--out runs/pods] [--only NAME ...] [--jobs 2]

Each recipe is `./launch.sh compile CONFIG --tpu SLICE [overrides]` in its
own process (a compile of a pod step takes minutes here); its full output is
kept as OUT/NAME.log and a recipe whose log is complete is not compiled
again. The table is printed in Markdown, with the command that made it.
"""
import argparse
import concurrent.futures
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DATA_PARALLEL = ["--config.param_sharding=()", "--config.gather_params=False"]

# name: (config, slice, overrides). The slices are those the configs'
# docstrings name.
RECIPES = {
    "wmt big": ("configs/wmt.py:big", "v5e-32", []),
    "ViT-B/16 i1k": ("configs/vit.py:i1k,variant=B/16", "v5e-256", []),
    "ViT-L/16 i21k": ("configs/vit.py:i21k,variant=L/16", "v5e-256", []),
    "ResNet-50 i1k": ("configs/resnet.py:i1k,variant=50", "v5e-64", []),
    "Swin-T i1k": ("configs/swin.py:i1k,variant=T", "v5e-64", []),
    "DINO S/16 i1k": ("configs/dino.py:i1k,variant=S/16", "v5e-64", []),
    "DINO B/16 i1k": ("configs/dino.py:i1k,variant=B/16", "v5e-128", []),
    "CLIP B/32 laion": ("configs/clip.py:laion,variant=B/32", "v5e-256", []),
    "caption COCO": ("configs/caption.py:coco", "v5e-32", []),
    "GPT-2 medium": ("configs/gpt.py:size=medium,pod=True", "v5e-64", []),
    "BERT base": ("configs/bert.py:pretrain,size=base,pod=True", "v5e-32", []),
    # The precision policy's effect: the same recipes in float32 throughout.
    # Before it was made to fit (the recipe scans and rematerialises):
    "GPT-2 medium unscanned": ("configs/gpt.py:size=medium,pod=True", "v5e-64",
                               ["--config.model.scan=False", "--config.model.remat=none"]),
    "ViT-B/16 i1k float32": ("configs/vit.py:i1k,variant=B/16", "v5e-256",
                             ["--config.model.dtype=float32", "--config.optim.mu_dtype=float32"]),
    "wmt big float32": ("configs/wmt.py:big", "v5e-32", ["--config.model.dtype=float32"]),
    # ZeRO-3 with one gather per step (`config.for_pods`) against plain data
    # parallelism, every chip keeping and updating all parameters.
    "ViT-B/16 i1k data parallel": ("configs/vit.py:i1k,variant=B/16", "v5e-256", DATA_PARALLEL),
    # WMT big is data parallel: split and gathered, its step was slower.
    "wmt big split": ("configs/wmt.py:big", "v5e-32", [
        "--config.param_sharding=(('.*embedding', (None, 'data')), ('.*', ('data',)))",
        "--config.gather_params=True"]),
}


def compile_one(name, out):
  config, slice_name, overrides = RECIPES[name]
  log = os.path.join(out, re.sub(r"\W+", "_", name).strip("_") + ".log")
  if os.path.exists(log) and any(done in open(log).read()
                                 for done in ("HBM per chip", "does not fit")):
    return name, log
  cmd = [sys.executable, "-m", "attnlab.main", "compile", config, "--tpu", slice_name,
         *overrides]
  t0 = time.time()
  p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
  with open(log, "w") as f:
    f.write(f"$ ./launch.sh compile {' '.join(cmd[4:])}\n{p.stdout}{p.stderr}"
            f"\n(exit {p.returncode}, {time.time() - t0:.0f} s)\n")
  return name, log


def row(name, log):
  text = open(log).read()
  config, slice_name, overrides = RECIPES[name]
  get = lambda pattern, default="": (re.search(pattern, text) or [None, default])[1]
  params = get(r"([\d,]+) params")
  gib = get(r"HBM per chip: (?:fits: )?(.*?) HBM per chip") or get(r"v\w+-\d+: (does not fit.*)")
  fits = "yes" if "HBM per chip: fits" in text else "no"
  step = get(r"estimated step .*?: ([\d.]+) ms")
  mfu = get(r"MFU ([\d.]+)%")
  rate = get(r"-> ([\d,]+ \w+/s)")
  compile_s = get(r"compiled in ([\d.]+) s")
  roof = get(r"roofline bound: ([\d.]+) ms")
  cmd = f"`{config}`" + (" " + " ".join(f"`{o}`" for o in overrides) if overrides else "")
  return (f"| {name} | {cmd} | {slice_name} | {params} | {gib} | {fits} | {compile_s} | "
          f"{step} | {roof} | {rate} | {mfu} |")


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", default=os.path.join(ROOT, "runs", "pods"))
  parser.add_argument("--only", nargs="*", default=None)
  parser.add_argument("--jobs", type=int, default=2)
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  names = args.only or list(RECIPES)
  print(f"$ python -m benchmarks.pods {' '.join(sys.argv[1:])}", flush=True)
  with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
    done = dict(pool.map(lambda n: compile_one(n, args.out), names))
  print("| recipe | config | slice | params | HBM per chip | fits | compile s | "
        "est. step ms | roofline ms | est. rate | est. MFU % |")
  print("|---|---|---|---:|---|---|---:|---:|---:|---:|---:|")
  for name in names:
    print(row(name, done[name]))


if __name__ == "__main__":
  main()
