"""Image handling of the published loaders, shared by the converter and the
reference loader so both apply the very same PIL calls.

Published rules (junwenxiong/diff_sal, Pillow 9.4 / torchvision 0.15):
- DHF1K frames and maps: `transforms.Resize((H, W))` on the PIL image, i.e.
  `img.resize((W, H), BILINEAR)`.
- AV frames: `pil_loader` does `img.convert('RGB').resize((320, 240))` with
  Pillow's default filter (BICUBIC for RGB since Pillow 7), then STAViS'
  `Scale([W, H])` does `img.resize((W, H), BILINEAR)`.
- AV maps: `convert('L')` then `transforms.Resize((H, W))` (BILINEAR).
- Maps become targets by ToTensor, i.e. divided by 255 (not by their max).
- Fixations: any nonzero pixel is fixated, as in the MIT benchmark code
  (`fixationMap > 0`) and our evaluator's raw readers.
- Images of any bit depth or mode: 16/32-bit integer grey is rescaled to
  8 bits (65535 -> 255; PIL's own `convert` would clip everything above 255
  to 255) before the rules above; palette, LA, RGBA and 1-bit images go
  through PIL's `convert` as the published loaders do. Float ('F') images
  have no defined range and are refused.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
import simplejpeg

AV_INTERMEDIATE_WH = (320, 240)
IMAGE_FORMATS = ("jpeg", "png")
JPEG_QUALITY = 95


def open_image(data: bytes) -> Image.Image:
  """Decodes fully (so truncated files raise here, not later)."""
  img = Image.open(io.BytesIO(data))
  img.load()
  return img


_WIDE_GREY = ("I", "I;16", "I;16L", "I;16B", "I;16N")


def to_8bit(img: Image.Image) -> Image.Image:
  """`img`, or for 16/32-bit integer grey the 'L' image round(v * 255 / 65535).

  Raises ValueError for float images and integer values outside 0..65535.
  """
  if img.mode == "F":
    raise ValueError(f"{img.mode} (float) image: no defined value range")
  if img.mode not in _WIDE_GREY:
    return img
  values = np.asarray(img).astype(np.float64)
  if values.size and (values.min() < 0 or values.max() > 65535):
    raise ValueError(f"{img.mode} image with values {values.min():g}..{values.max():g} "
                     "outside 0..65535")
  return Image.fromarray(np.round(values * (255 / 65535)).astype(np.uint8), "L")


def grey_unit(img: Image.Image) -> np.ndarray:
  """float64 (H, W) in [0, 1]; colour images give channel 0.

  Channel 0 (not a luma mix) is what the MATLAB evaluation reads
  (`I(:, :, 1)` after `im2double`). 8-bit values are divided by 255, 16-bit
  (and 'I') by 65535, 1-bit is 0/1; palette images are read through their
  palette (an index is not a grey level).
  """
  if img.mode in ("P", "PA"):
    img = img.convert("RGBA" if img.mode == "PA" else "RGB")
  pixels = np.asarray(img)
  if pixels.ndim == 3:
    pixels = pixels[..., 0]
  if pixels.dtype == np.uint8:
    return pixels / 255.0
  if np.issubdtype(pixels.dtype, np.integer):
    return pixels / 65535.0
  return pixels.astype(np.float64)   # bool (1-bit) or float


def frame_to_model_size(img: Image.Image, family: str, size_hw) -> np.ndarray:
  """RGB uint8 (H, W, 3) exactly as the published loader of `family` sees it."""
  height, width = size_hw
  img = to_8bit(img).convert("RGB")
  if family == "av":
    # Explicit BICUBIC = the default the published code relied on.
    img = img.resize(AV_INTERMEDIATE_WH, Image.BICUBIC)
  return np.asarray(img.resize((width, height), Image.BILINEAR))


def map_to_model_size(img: Image.Image, size_hw) -> np.ndarray:
  """Grey uint8 (H, W) map; the target is this divided by 255."""
  height, width = size_hw
  return np.asarray(to_8bit(img).convert("L").resize((width, height), Image.BILINEAR))


def fixation_points(binary: np.ndarray) -> np.ndarray:
  """(K, 2) int32 (row, col) of the fixated pixels of a boolean map."""
  return np.argwhere(binary).astype(np.int32)


def fixations_from_image(img: Image.Image) -> np.ndarray:
  """DHF1K fixation PNG -> points (any nonzero pixel, as the evaluator reads
  it: `grey_unit(img) > 0`)."""
  return fixation_points(grey_unit(img) > 0)


def render_fixations(points: np.ndarray, orig_hw, size_hw) -> np.ndarray:
  """Binary uint8 (H, W) map at `size_hw` of points given at `orig_hw`.

  A fixation at original pixel (r, c) lands on (r*H//H0, c*W//W0), so every
  fixation survives downscaling (a resize of the binary map would blur or
  drop isolated pixels).
  """
  height, width = size_hw
  out = np.zeros((height, width), np.uint8)
  if len(points):
    rows = points[:, 0].astype(np.int64) * height // orig_hw[0]
    cols = points[:, 1].astype(np.int64) * width // orig_hw[1]
    out[rows, cols] = 1
  return out


def encode_image(array: np.ndarray, fmt: str) -> bytes:
  """JPEG (quality 95, no chroma subsampling) or PNG bytes of a uint8 array."""
  buffer = io.BytesIO()
  img = Image.fromarray(array)
  if fmt == "jpeg":
    img.save(buffer, "JPEG", quality=JPEG_QUALITY, subsampling=0)
  elif fmt == "png":
    img.save(buffer, "PNG", compress_level=1)
  else:
    raise ValueError(f"image format must be one of {IMAGE_FORMATS}, got {fmt!r}")
  return buffer.getvalue()


def decode_image(data: bytes) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(data)))


def decode_rgb_into(data: bytes, out: np.ndarray) -> None:
  """Decodes an RGB frame straight into `out` (H, W, 3) uint8.

  JPEGs go through simplejpeg, which writes into `out` without the two copies
  of PIL's decode + `np.asarray` (same libjpeg-turbo, default IDCT and
  upsampling, so the same pixels; the round-trip tests check it); PNG via PIL.
  """
  if data[:2] == b"\xff\xd8":
    decoded = simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=out)
  else:
    decoded = decode_image(data)
  if decoded.shape != out.shape:
    raise ValueError(f"stored frame is {decoded.shape}, expected {out.shape}")
  if decoded.ctypes.data != out.ctypes.data:
    out[...] = decoded
