"""The image backbones every vision objective builds from `config.model`:
a ViT, a ResNet (with non-local blocks or local self-attention) or a Swin,
chosen by `model.name`; their one-line checks of `config.model`, and
taking a pretrained classification run's variables for one."""
import jax
import jax.numpy as jnp
import numpy as np

from attnlab import checkpoint as ckpt_lib
from attnlab import config as config_lib
from attnlab.models import resnet
from attnlab.models import swin
from attnlab.models import vit

HEAD = "head"  # the parameters a fine-tuned run starts afresh


def model_fields(m):
  """ViT's fields from config.model: the variant string, then explicit
  overrides (0 keeps the variant's value; for small embedded models)."""
  fields = vit.parse_variant(m.variant)
  fields.update({k: m[k] for k in ("width", "depth", "mlp_dim", "num_heads") if m.get(k)})
  return fields


def swin_fields(m):
  """Swin's fields from config.model: the variant string ("T"), then
  overrides (0 or () keeps the variant's value)."""
  fields = swin.parse_variant(m.variant)
  fields.update({k: tuple(m[k]) if k != "width" else m[k]
                 for k in ("width", "depths", "num_heads") if m.get(k)})
  return fields


def make(m, num_classes):
  """The backbone of config.model with a head of `num_classes` (0: none)."""
  if m.name == "resnet":
    return resnet.ResNet(num_classes, depth=resnet.parse_variant(m.variant),
                         width=m.width or 64, norm=m.norm, small_inputs=m.small_inputs,
                         nonlocal_stages=tuple(m.get("nonlocal_stages", ())),
                         spatial=m.get("spatial", "conv"),
                         local_kernel=m.get("local_kernel", 7),
                         local_heads=m.get("local_heads", 8), dtype=jnp.dtype(m.dtype))
  if m.name == "swin":
    return swin.Swin(num_classes, **swin_fields(m), patch=m.patch, window=m.window,
                     drop_path=m.drop_path, implementation=m.implementation,
                     dtype=jnp.dtype(m.dtype))
  return vit.ViT(
      num_classes=num_classes, **model_fields(m), image_size=m.image_size, pool=m.pool,
      posemb=m.posemb, representation_size=m.representation_size, dropout=m.dropout,
      attention_dropout=m.attention_dropout, implementation=m.implementation,
      scan=m.scan, remat=m.remat, drop_path=m.drop_path, head_bias=m.head_bias,
      dtype=jnp.dtype(m.dtype))

def validate(config):
  """config.model of a ViT, ResNet or Swin (for every vision experiment):
  the variant, its sizes, and an image size the model can take."""
  m = config.model
  config_lib.check_choice(config, "model.name", {"vit", "resnet", "swin"})
  if m.name == "resnet":
    try:
      depth = resnet.parse_variant(m.variant)
    except ValueError as e:
      raise config_lib.ConfigError("model.variant", str(e), "e.g. --config.model.variant=50")
    config_lib.check_choice(config, "model.norm", {"batch", "group"})
    stages = len(resnet.DEPTHS[depth][1])
    bad = [s for s in m.get("nonlocal_stages", ()) if not 1 <= s <= stages]
    config_lib.check(not bad, "model.nonlocal_stages",
                     f"stage {bad[0] if bad else ''} is out of range: ResNet-{depth} has "
                     f"stages 1-{stages}", "e.g. --config.model.nonlocal_stages=(2,3)")
    if "spatial" in m:  # (runs from before attention in ResNets have no such key)
      config_lib.check_choice(config, "model.spatial", {"conv", "local"})
    if m.get("spatial") == "local":
      config_lib.check(m.local_kernel % 2 == 1 and m.local_kernel > 0, "model.local_kernel",
                       f"{m.local_kernel} is not odd: a neighbourhood needs a centre pixel",
                       "e.g. 7 (the 7 x 7 of Ramachandran et al. and Hu et al.)")
      config_lib.check(m.local_heads > 0 and (m.width or 64) % m.local_heads == 0,
                       "model.local_heads", f"{m.local_heads} heads do not divide the "
                       f"first stage's {m.width or 64} channels", "use a divisor of model.width")
  elif m.name == "swin":
    try:
      fields = swin_fields(m)
    except ValueError as e:
      raise config_lib.ConfigError("model.variant", str(e), "e.g. --config.model.variant=T")
    config_lib.check(len(fields["depths"]) == len(fields["num_heads"]), "model.num_heads",
                     f"{len(fields['num_heads'])} stages of heads for "
                     f"{len(fields['depths'])} stages of blocks", "give one per stage")
    problem = swin.check_sizes(m.image_size, m.patch, m.window, len(fields["depths"]))
    config_lib.check(problem is None, "model.image_size", problem,
                     "resize the images (data.pp_*) or change model.window / model.patch")
    config_lib.check(0 <= m.drop_path < 1, "model.drop_path", f"{m.drop_path} is not in [0, 1)",
                     "e.g. 0.2 (Swin-T's rate at the last block)")
  else:
    try:
      fields = model_fields(m)
    except ValueError as e:
      raise config_lib.ConfigError("model.variant", str(e), "e.g. --config.model.variant=S/16")
    config_lib.check(m.image_size % fields["patch"] == 0, "model.image_size",
                     f"{m.image_size} is not divisible by the patch size {fields['patch']}",
                     "resize the images (data.pp_*) to a multiple of the patch, or change "
                     "the variant's patch")
    config_lib.check(fields["width"] % fields["num_heads"] == 0, "model.width",
                     f"{fields['width']} is not divisible by {fields['num_heads']} heads",
                     "use a multiple of model.num_heads")
    config_lib.check_choice(config, "model.pool", {"tok", "gap"})
    config_lib.check_choice(config, "model.posemb", {"learn", "sincos2d"})
    config_lib.check(0 <= m.drop_path < 1, "model.drop_path", f"{m.drop_path} is not in [0, 1)",
                     "e.g. 0.1 (the rate of the last layer; 0 at the first)")


def pretrained(config, model, params, model_state):
  """`params` and `model_state` of a backbone `model` with every variable
  but the head taken from the run `config.init_from` (a classification run
  of the same architecture), position embeddings resized to this run's
  grid (vit.resize_posemb). A one-line ConfigError for another architecture."""
  source = config.init_from
  loaded, loaded_state = ckpt_lib.load_variables(source)
  loaded = {k: v for k, v in loaded.items() if k != HEAD}
  if "pos_embedding" in loaded and "pos_embedding" in params:
    side = config.model.image_size // model.patch
    prefix = 1 if model.pool == "tok" else 0
    tokens = loaded["pos_embedding"].shape[1]
    old_side = int(round(np.sqrt(max(tokens - prefix, 0))))
    config_lib.check(
        old_side * old_side == tokens - prefix, "init_from",
        f"{source}'s {tokens} position embeddings are not {prefix} class token(s) + a "
        f"square grid, so they cannot be interpolated to {side} x {side}",
        "fine-tune with the pretrained run's model.pool (tok: a class token; gap: none)")
    loaded["pos_embedding"] = vit.resize_posemb(loaded["pos_embedding"], (side, side), prefix)
  mine = {k: v for k, v in params.items() if k != HEAD}
  shapes = lambda t: jax.tree.map(lambda x: tuple(x.shape), t)
  if shapes(mine) != shapes(loaded):
    raise config_lib.ConfigError(
        "init_from", f"{source} holds another architecture than model.variant="
        f"{config.model.variant}", "start from a run with this run's model.* keys")
  if jax.tree.structure(loaded_state) == jax.tree.structure(model_state):
    model_state = loaded_state
  return {**params, **loaded}, model_state
