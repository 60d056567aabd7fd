r"""Audio-visual fine-tuning on the six STAViS datasets, one fold per run.

  python -m diffsal_jax.main --config=configs/av_finetune.py:fold=2 \
      --workdir=runs/av/fold_2 --config.data.shards=/data/av_shards \
      --config.init_from=/ckpt/vggish,runs/pretrain
  python -m diffsal_jax.main --mode=all_folds --config=configs/av_finetune.py \
      --workdir=runs/av --config.data.shards=/data/av_shards \
      --config.init_from=/ckpt/vggish,runs/pretrain

`init_from` lists checkpoints applied in order: converted weights holding
VGGish (e.g. `python -m diffsal_jax.convert` output of the published
audio-visual model), then the DHF1K pre-training run (its best checkpoint);
variables absent from all of them keep their random initialisation, like the
published `load_state_dict(strict=False)`. Every fold starts afresh from
them (the published script carried one model from fold to fold).

The six datasets are pooled per fold as published (cfgs/dataset.json);
`data.val_videos_per_dataset` videos per dataset are held out of the fold's
training list to choose the best checkpoint, and the fold's test list is only
scored at the end. Sources: cfgs/diffusion.yml (n_epochs_for_av_data: 4,
optim), scripts/train_av.sh (4 GPUs x batch 4).
"""

from diffsal_jax.training import train_config
from diffsal_jax.models import config as model_config


def get_config(argument: str = ""):
  """`argument`: optional 'fold=K' (K in 1..3, default 1)."""
  fields = dict(item.split("=", 1) for item in argument.split(",") if item)
  unknown = set(fields) - {"fold"}
  if unknown:
    raise ValueError(f"configs/av_finetune.py: unknown argument(s) "
                     f"{sorted(unknown)}; use configs/av_finetune.py:fold=K")
  c = train_config.base_config("av")
  c.model = model_config.published_model_config("av")
  c.data.dataset = "av"
  c.data.fold = int(fields.get("fold", 1))
  c.data.val_videos_per_dataset = 1
  c.batch_size = 16                 # scripts/train_av.sh: 4 x 4 GPUs
  c.eval_batch_size = 16
  c.num_epochs = 4                  # diffusion.yml n_epochs_for_av_data
  c.learning_rate = 1e-4
  c.adam_eps = 1e-8
  c.grad_clip_norm = 1.0
  c.lr_decay_fractions = (0.5, 0.75)
  c.lr_decay_factor = 0.1
  c.frozen_subtrees = ("audio_net",)  # VGGish frozen
  c.diffusion.sampling_steps = 1
  c.diffusion.eta = 0.0
  c.best_metric = "cc+nss+sim"
  c.eval_split = "val"              # held out of the fold's training list
  c.final_eval_split = "test"       # the fold's test list, scored once
  c.eval_every_steps = -1           # once per epoch, as published
  c.checkpoint_every_steps = 1000
  return c
