r"""The audio-visual demo: tiny models on synthetic STAViS-like data.

  python -m diffsal_jax.main --config=configs/demo_av.py --workdir=/tmp/diffsal_demo_av
  python -m diffsal_jax.main --config=configs/demo_av.py:variant=visual \
      --workdir=/tmp/diffsal_demo_av_visual

Two discs move alike; a tone whose pitch names one disc's colour says which
one observers look at, so only a model that hears can tell them apart. The
visual variant trains the same network without the audio branch on the same
data, for comparison. Fold 1 of the synthetic fold lists; four videos per
dataset are held out for validation and the fold's test list is scored at
the end. No download: the data (0.5 GB) is generated into
`<workdir>/synthetic_data`. About 5 minutes on a 2-core CPU.
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
  # (the published quirks only matter for loading published weights).
  # VGGish stays frozen as published, here at its random initialisation:
  # random convolutions keep the pitch apart, and training them from scratch
  # at the demo's lr made the audio-visual model worse (measured: held-out
  # CC 0.19 against 0.57 frozen after 1500 steps).
  c.model.fix_quirks = True
  c.data.dataset = "av"
  c.data.av_datasets = ("DIEM", "AVAD")
  c.data.fold = 1
  c.data.val_videos_per_dataset = 4
  c.synthetic_data.layout = "av"
  c.synthetic_data.av_datasets = ("DIEM", "AVAD")
  # Each video gives one training clip, its centre 4 frames (published
  # 90-frame windows), and with too few videos the model learns each video's
  # disc instead of the audio cue (measured: 128 per dataset were not
  # enough). The other frames are only scored (val, test), so 12 frames a
  # video do: less data to write and score than the 20 (and 40) before, as
  # many training clips.
  c.synthetic_data.videos_per_dataset = 384
  c.synthetic_data.frames_per_video = 12
  # 6.25 fps: a 4-frame clip then holds 0.64 s of sound, as a published
  # 16-frame clip at 25 fps does, and fills VGGish's patches instead of a
  # quarter of them.
  c.synthetic_data.fps = 6.25
  c.final_eval_split = "test"
  c.final_report = True              # <workdir>/report/index.html
  # The visual demo's lr (it used 3e-3 then): at 3e-3 some seeds settled on the
  # visual answer (both discs) and never found the audio cue; at 1e-3 seeds
  # 0-6 all found it. docs/design.md: "The audio-visual demo". The cue is
  # found late: in bfloat16, seed 0 found it between steps 1000 and 1250
  # (a 1000-step run ended at val CC 0.61). Seeds 0, 1, 2 in float32 and
  # bfloat16: docs/training.md, "The demos and what they learn".
  c.learning_rate = 1e-3
  c.num_train_steps = 1500
  c.eval_every_steps = 250
  c.checkpoint_every_steps = 250
  return c
