r"""The audio-visual demo: tiny models on synthetic STAViS-like data.

  python -m diffsal_jax.main --config=configs/demo_av.py --workdir=/tmp/diffsal_demo_av
  python -m diffsal_jax.main --config=configs/demo_av.py:variant=visual \
      --workdir=/tmp/diffsal_demo_av_visual

Two discs move alike; a tone whose pitch names one disc's colour says which
one observers look at, so only a model that hears can tell them apart. The
visual variant trains the same network without the audio branch on the same
data, for comparison. Fold 1 of the synthetic fold lists; one video per
dataset is held out for validation and the fold's test list is scored at the
end. No download: the data is generated into `<workdir>/synthetic_data`.
"""

from configs import demo


def get_config(argument: str = ""):
  """`argument`: optional 'variant=visual' (default 'av')."""
  fields = dict(item.split("=", 1) for item in argument.split(",") if item)
  variant = fields.pop("variant", "av")
  if fields or variant not in ("av", "visual"):
    raise ValueError(f"configs/demo_av.py: bad argument {argument!r}; use "
                     "configs/demo_av.py[:variant=visual]")
  c = demo.get_config()
  c.model = demo.demo_model_config(variant)
  # Trained from scratch, so use the intended audio embedding and fusion
  # (the published quirks only matter for loading published weights) and
  # train VGGish too (freezing it only makes sense once it is pre-trained).
  c.model.fix_quirks = True
  c.frozen_subtrees = ()
  c.data.dataset = "av"
  c.data.av_datasets = ("DIEM", "AVAD")
  c.data.fold = 1
  c.data.val_videos_per_dataset = 4
  c.synthetic_data.layout = "av"
  c.synthetic_data.av_datasets = ("DIEM", "AVAD")
  # 40-frame videos give one training clip each (published 90-frame windows).
  c.synthetic_data.videos_per_dataset = 128
  c.final_eval_split = "test"
  return c
