"""Benchmarks that print numbers and the command that made them (never timed
asserts in tests): `python -m benchmarks NAME [ARGS...]`.

Against a peer, both programs run in ONE process in alternating windows
(ours, theirs, ours, ...) and the figure is the median ratio of the rounds:
the machine is shared and noisy. Peers are checkouts fetched at run time,
never copied here. The TPU compiler's view has its own entry points:
`python -m benchmarks.pods` (every pod recipe) and `python -m
benchmarks.tpu_peers` (side by side with big_vision and the flax example).
"""
import importlib
import sys

from benchmarks.timing import header


def _words(args):
  return [a for a in args if not a.startswith("--")]


def _beam(decoding, args):
  dirs = [a for a in _words(args) if not a.isdigit()]
  sizes = [int(a) for a in args if a.isdigit()] or (1, 4)
  decoding.beam(dirs, sizes, reference="--reference" in args)


def _charlm(training, args):
  training.bench_charlm(_words(args), cold_start="--no_cold_start" not in args)


# NAME: (usage after NAME, what it prints, the module under benchmarks/, the
# call of that module with the arguments after NAME).
# A usage in capitals without brackets is required.
COMMANDS = {
    "charlm": ("[CONFIG_ARGS...] [--no_cold_start]",
               "char-LM step tokens/s and MFU (several CONFIG_ARGS, e.g. cell=lstm "
               "cell=gru: alternating windows, median ratios), the input pipeline "
               "against what a step consumes, cold start to the first step", "training", _charlm),
    "steps": ("SPEC [--config.K=V...] [SPEC ...]",
              "train steps/s of several configs, each on its own data, in alternating "
              "windows: median ratio, spread",
              "training", lambda m, a: m.bench_steps(a)),
    "pipeline": ("SPEC...", "a config's input pipeline alone (batches/s, items/s) against "
                 "what its train step consumes",
                 "training", lambda m, a: m.bench_pipeline(a)),
    "ahead": ("SPEC [--config.K=V...]", "whole training runs with config.device_put_ahead "
              "0, 1 and 2, alternating: steps/s, median ratio",
              "training", lambda m, a: m.bench_ahead(a)),
    "clipmem": ("", "CLIP's step, global vs local loss, 1 -> 8 devices at 32 pairs each: "
                "temporaries per device, pairs/s (JAX_NUM_CPU_DEVICES=8)",
                "training", lambda m, a: m.clip_memory()),
    "beam": ("WORKDIR... [BEAM...] [--reference]",
             "beam-search translation of trained runs' validation split: sentences/s, "
             "tokens/s and BLEU per beam size (default 1 and 4)", "decoding", _beam),
    "decode": ("", "greedy decoding of 128 new tokens with the Transformer (base dims): "
               "key/value cache vs recomputing the prefix at every step",
               "decoding", lambda m, a: m.decode_speed()),
    "sample": ("", "GPT sampling with the key/value cache at 128 and 1024 new tokens",
               "decoding", lambda m, a: m.gpt_sampling()),
    "attention": ("", "self-attention forward + backward, naive vs memory-efficient: peak "
                  "memory and time, n = 1k..16k",
                  "kernels", lambda m, a: m.attention()),
    "localattention": ("", "local self-attention's temporaries at 56 x 56 and 112 x 112 "
                       "(scanned, unrolled, global for contrast) and the two forms' speed",
                       "kernels", lambda m, a: m.local_attention_memory()),
    "dinohead": ("", "DINO's 65,536-wide last layer and centre: flax's nn.WeightNorm(Dense) "
                 "against ours ([out, in] rows), alternating",
                 "kernels", lambda m, a: m.dino_head_layouts()),
    "matmul": ("", "XLA:CPU's matmul against PyTorch's at the peers' step shapes (torch "
               "on PYTHONPATH), alternating",
               "kernels", lambda m, a: m.matmul_backends()),
    "flaxwmt": ("FLAX/examples/wmt", "train-step tokens/s and MFU at the Transformer's base "
                "dims, f32 and bf16, against the flax WMT example, alternating",
                "vs_flax_wmt", lambda m, a: m.flax_wmt(a[0])),
    "flaxdecode": ("FLAX/examples/wmt", "beam search and greedy decoding against the flax "
                   "WMT example's, alternating",
                   "vs_flax_wmt", lambda m, a: m.flax_decode(a[0])),
    "bigvision": ("BIG_VISION [VARIANT...]", "ViT training images/s (default Ti/16 and "
                  "S/16) at 224, batch 8, f32, against big_vision's, alternating",
                  "vs_big_vision", lambda m, a: m.big_vision_vit(
                      a[0], *([a[1:]] if a[1:] else []))),
    "dino": ("DINO [VARIANT]", "DINO training images/s (default S/16), 2 x 224 + 6 x 96 "
             "crops, batch 8, f32, against the authors' PyTorch DINO, alternating",
             "vs_dino", lambda m, a: m.dino_torch(*a[:2])),
    "openclip": ("[VARIANT]", "CLIP training pairs/s (default B/32), batch 8, context 77, "
                 "f32, against open_clip's, alternating",
                 "vs_open_clip", lambda m, a: m.clip_open_clip(*a[:1])),
    "swin": ("[VARIANT]", "Swin training images/s (default T) at 224, batch 8, f32, against "
             "timm's, alternating",
             "vs_timm", lambda m, a: m.timm_swin(*a[:1])),
}


def usage():
  lines = [f"  {name} {args}\n      {what}" for name, (args, what, *_) in COMMANDS.items()]
  return "python -m benchmarks NAME [ARGS...]\n" + "\n".join(lines)


def main(argv):
  name, args = (argv[0], argv[1:]) if argv else ("", [])
  if name not in COMMANDS:
    sys.exit(f"unknown benchmark {name!r}; one of: {', '.join(COMMANDS)}\n{usage()}")
  required = [w for w in COMMANDS[name][0].split() if w.isupper() and "..." not in w
              and not w.startswith("[")]
  if len(_words(args)) < len(required):
    sys.exit(f"usage: python -m benchmarks {name} {COMMANDS[name][0]}")
  _, _, module, call = COMMANDS[name]
  header()
  call(importlib.import_module(f"benchmarks.{module}"), args)


if __name__ == "__main__":
  main(sys.argv[1:])
