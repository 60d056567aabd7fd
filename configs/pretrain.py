r"""DHF1K pre-training of the visual DiffSal model, with the published recipe.

  python -m diffsal_jax.main --config=configs/pretrain.py \
      --workdir=runs/pretrain --config.data.shards=/data/dhf1k_shards

Sources: cfgs/diffusion.yml (optim, diffusion, sampling, n_epochs),
scripts/train.sh (4 GPUs x batch 4, MultiStepLR), util/utils.py (milestones
at 50% and 75% of the epochs, gamma 0.1), diffusion_trainer.py (best
checkpoint = max of CC + SIM + NSS on DHF1K val, which is also the reported
split since DHF1K test maps are not public).
"""

from diffsal_jax.training import train_config
from diffsal_jax.models import config as model_config


def get_config():
  c = train_config.base_config("visual")
  c.model = model_config.published_model_config("visual")
  c.data.dataset = "dhf1k"
  c.batch_size = 16                 # scripts/train.sh: batch_size=4 x 4 GPUs
  c.eval_batch_size = 16
  c.num_epochs = 3                  # diffusion.yml training.n_epochs
  c.learning_rate = 1e-4            # optim.lr
  c.adam_eps = 1e-8                 # optim.eps
  c.grad_clip_norm = 1.0            # optim.grad_clip
  c.lr_decay_fractions = (0.5, 0.75)  # util/utils.py MultiStepLR milestones
  c.lr_decay_factor = 0.1
  c.diffusion.sampling_steps = 1    # sampling.timesteps
  c.diffusion.eta = 0.0             # sampling.eta
  c.best_metric = "cc+nss+sim"      # get_kl_cc_sim_loss_wo_weight 'total'
  c.eval_split = "val"
  c.final_eval_split = "val"
  c.eval_every_steps = -1           # published: validate once per epoch
  c.checkpoint_every_steps = 1000   # plus one at the end of the run
  return c
