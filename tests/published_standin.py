"""A stand-in for a checkout of the published code, small enough for tests.

It has the files and names `tools/published_reference.load_reference` reads
(cfgs/audio_visual.py with `config` and `new_config`, util/registry.py's
OBJECT_REGISTRY, models/sal_losses.get_lossv2, a model with visual_net,
audio_net.forward_feat, forward_vggish and decoder_net) and imports a
dataset module as the published config does, but its networks are one
convolution each, for any input size. Needs torch.
"""

import pathlib
import textwrap

FILES = {
    "model.py": "# stand-in: the published model.py builds the model for training\n",
    "cfgs/diffusion.yml": "optim:\n    lr: 0.0001\n",
    "util/__init__.py": "",
    "util/registry.py": """
        from mmcv.utils import Registry

        OBJECT_REGISTRY = Registry("standin")
        """,
    "models/__init__.py": "",
    "models/sal_losses.py": """
        def get_lossv2(config, predictions, gt):
            return {"total": ((predictions - gt) ** 2).sum()}
        """,
    "models/diff_model.py": """
        import torch
        from torch import nn
        from mmcv.utils import build_from_cfg
        from util.registry import OBJECT_REGISTRY


        class Visual(nn.Module):
            def __init__(self, pretrained=None):
                super().__init__()
                self.conv = nn.Conv3d(3, 4, 3, padding=1)

            def forward(self, img):                      # (B, 3, T, H, W)
                return [self.conv(img).mean(2)]          # [(B, 4, H, W)]


        class Audio(nn.Module):
            def __init__(self, pretrained=True):
                super().__init__()
                self.conv = nn.Conv2d(1, 4, 3, padding=1)

            def forward_feat(self, audio):               # (B * P, 1, h, w)
                return self.conv(audio)


        class Decoder(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(5, 1, 3, padding=1)

            def forward(self, x, t, vis_list, audio_embed):
                y = self.conv(torch.cat([x, vis_list[0]], 1))
                if audio_embed is not None:
                    y = y + audio_embed.mean()
                return torch.sigmoid(y)


        class VideoSaliencyModel(nn.Module):
            def __init__(self, visual_net, audio_net, decoder_net):
                super().__init__()
                self.visual_net = build_from_cfg(visual_net, OBJECT_REGISTRY)
                self.audio_net = build_from_cfg(audio_net, OBJECT_REGISTRY)
                self.decoder_net = build_from_cfg(decoder_net, OBJECT_REGISTRY)

            def forward_vggish(self, audio):             # (B, 1, P, h, w)
                flat = audio.reshape(-1, 1, *audio.shape[3:])
                with torch.no_grad():
                    feat = self.audio_net.forward_feat(flat)
                return feat, feat

            def forward(self, data, t):
                _, audio_embed = self.forward_vggish(data["audio"])
                return self.decoder_net(data["input"], t,
                                        self.visual_net(data["img"]), audio_embed)
        """,
    "cfgs/audio_visual.py": """
        import types
        from models.diff_model import VideoSaliencyModel, Visual, Audio, Decoder
        from datasets.dhf1k_data import DHF1KDatasetMultiFrames

        new_config = types.SimpleNamespace(optim=types.SimpleNamespace(
            lr=1e-4, beta1=0.9, eps=1e-8, weight_decay=0.0, amsgrad=False,
            grad_clip=1.0))
        config = dict(type=VideoSaliencyModel, visual_net=dict(type=Visual),
                      audio_net=dict(type=Audio), decoder_net=dict(type=Decoder))
        """,
}


def write_standin(root: pathlib.Path) -> pathlib.Path:
  """Writes the stand-in checkout under `root`; returns `root`."""
  for name, text in FILES.items():
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
  return root
