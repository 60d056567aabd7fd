"""Describes a converted OUT folder to TensorFlow Datasets (no TensorFlow needed).

`write(out_dir, manifest)` makes OUT a TFDS dataset directory over the same
shards grain reads, so that

  builder = tfds.builder_from_directory(OUT)
  frames = builder.as_data_source(split="train")   # or tfds.data_source(...)

gives one example per frame. It writes, each file atomically:

- `OUT/tfds/<split>/<name>.array_record-<i>-of-<n>`: relative symbolic links,
  one per video of the split, to `OUT/shards/<video>.array_record` (no data
  is copied). TFDS reads the first `num_frames` records of each shard, the
  frame records; the audio chunks after them are not TFDS examples.
- `OUT/features.json`: the features of `frame_features`.
- `OUT/metadata.json`: format, image size, the split and fold video lists
  and per-video facts (frames, fps, original size, has maps, audio format).
- `OUT/dataset_info.json` (last): name `diffsal_<dhf1k|av>`, version 2.0.0,
  the splits with their shard lengths (frames per video).

Splits: DHF1K `train`, `val`, `test` (test has no maps); AV `fold<f>_train`
and `fold<f>_test` for f = 1..3 (a video sits in several: its links share
one shard). The input pipeline's AV `val` (videos held out of a fold's train
list by hash) is not a TFDS split.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import shutil

import numpy as np

from diffsal_jax.data import manifest as manifest_lib

VERSION = "2.0.0"
TFDS_DIR = "tfds"   # the split links live under OUT/tfds/<split>/


def builder_name(manifest: manifest_lib.Manifest) -> str:
  return f"diffsal_{manifest.dataset}"


def split_videos(manifest: manifest_lib.Manifest) -> dict[str, list[str]]:
  """TFDS split name -> video keys, in manifest order (empty splits left out)."""
  if manifest.dataset == "dhf1k":
    splits = dict(manifest.splits)
  else:
    splits = {f"fold{fold}_{part}": keys for fold, parts in sorted(manifest.folds.items())
              for part, keys in parts.items()}
  order = manifest.index_of()
  return {name: sorted(keys, key=order.__getitem__) for name, keys in splits.items() if keys}


def frame_features(manifest: manifest_lib.Manifest):
  """The `tfds.features.FeaturesDict` of a frame record (`shards.frame_record`).

  image: uint8 (H, W, 3) at model size (manifest image height/width), stored
    as the converter's JPEG or PNG.
  map: list of 0 or 1 uint8 (H, W, 1) saliency maps at model size (PNG);
    empty for videos without maps (DHF1K test).
  map_orig: list of 0 or 1 byte strings, the release's map file as is.
  fixations: int32 (K, 2) fixation points (row, col) in pixels of the
    original frame size; (0, 2) when there are none.
  video: the video key as bytes, e.g. b'DHF1K/1', b'AVAD/V1_Speech1'.
  frame: int32, the frame number, 1-based.
  """
  import tensorflow_datasets as tfds   # pylint: disable=g-import-not-at-top (heavy, convert only)
  height, width = manifest.image_hw
  image_format = manifest.image["format"]
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(height, width, 3), encoding_format=image_format,
                                   doc="frame at model size, uint8 RGB"),
      "map": tfds.features.Sequence(
          tfds.features.Image(shape=(height, width, 1), encoding_format="png"),
          doc="0 or 1 saliency map at model size, uint8"),
      "map_orig": tfds.features.Sequence(
          tfds.features.Tensor(shape=(), dtype=np.object_),
          doc="0 or 1 byte string: the release's map file"),
      "fixations": tfds.features.Tensor(
          shape=(None, 2), dtype=np.int32, encoding=tfds.features.Encoding.BYTES,
          doc="fixations (row, col) at the original frame size"),
      "video": tfds.features.Text(doc="video key, e.g. DHF1K/1"),
      "frame": tfds.features.Scalar(dtype=np.int32, doc="frame number, 1-based"),
  })


def _metadata(manifest: manifest_lib.Manifest) -> dict:
  return {
      "format": manifest.format,
      "dataset": manifest.dataset,
      "image": manifest.image,
      "splits": manifest.splits,
      "folds": manifest.folds,
      "fold_lists": manifest.fold_lists,
      "videos": {v.key: {"num_frames": v.num_frames, "fps": v.fps,
                         "orig_hw": list(v.orig_hw), "has_maps": v.has_maps,
                         "has_fixations": v.has_fixations, "shard": v.shard,
                         "empty_map_frames": v.empty_map_frames, "audio": v.audio}
                 for v in manifest.videos},
  }


@contextlib.contextmanager
def _quiet_absl():
  """TFDS logs through absl (INFO/WARNING lines); keep them off the console."""
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


def _link_splits(out: pathlib.Path, manifest, name: str, splits: dict[str, list[str]]):
  """Writes OUT/tfds/ (the split links) through a temp folder and a rename;
  returns the split infos."""
  import tensorflow_datasets as tfds   # pylint: disable=g-import-not-at-top
  by_key = {v.key: v for v in manifest.videos}
  tmp = out / f".{TFDS_DIR}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  infos = []
  for split, keys in splits.items():
    template = tfds.core.ShardedFileTemplate(
        data_dir=out, template=f"{TFDS_DIR}/{{SPLIT}}/{{DATASET}}.{{FILEFORMAT}}-{{SHARD_X_OF_Y}}",
        dataset_name=name, split=split, filetype_suffix="array_record")
    (tmp / split).mkdir(parents=True)
    videos = [by_key[k] for k in keys]
    for video, path in zip(videos, template.sharded_filepaths(len(videos))):
      link = tmp / split / pathlib.Path(os.fspath(path)).name
      link.symlink_to(pathlib.Path("..", "..", manifest_lib.SHARD_DIR, video.shard))
    infos.append(tfds.core.SplitInfo(
        name=split, shard_lengths=[v.num_frames for v in videos],
        num_bytes=sum(max(v.shard_bytes, 0) for v in videos), filename_template=template))
  old = out / f".{TFDS_DIR}.old-{os.getpid()}"
  if (out / TFDS_DIR).exists():
    os.replace(out / TFDS_DIR, old)
  os.replace(tmp, out / TFDS_DIR)
  shutil.rmtree(old, ignore_errors=True)
  return infos


def write(out_dir: os.PathLike, manifest: manifest_lib.Manifest) -> None:
  """Writes the TFDS files of OUT (see the module docstring); a rerun (e.g.
  after `convert --resume`) replaces them."""
  out = pathlib.Path(out_dir)
  with _quiet_absl():
    import tensorflow_datasets as tfds   # pylint: disable=g-import-not-at-top
    name = builder_name(manifest)
    splits = split_videos(manifest)
    infos = _link_splits(out, manifest, name, splits)
    info = tfds.core.DatasetInfo(
        builder=tfds.core.DatasetIdentity(name=name, version=tfds.core.Version(VERSION),
                                          data_dir=str(out), module_name=__name__),
        description=(f"DiffSal {manifest.dataset} frames converted by `python -m data_prep "
                     "convert`: one example per frame (image, saliency map, fixations)."),
        features=frame_features(manifest),
        metadata=tfds.core.MetadataDict(_metadata(manifest)),
        split_dict=tfds.core.SplitDict(infos),
        disable_shuffling=True)
    info.set_file_format("array_record")
    tmp = out / f".tfds_info.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    info.write_to_directory(tmp)
    written = sorted(p.name for p in tmp.iterdir())
    # dataset_info.json last: a reader finds it only with the rest in place.
    for file_name in sorted(written, key=lambda n: n == "dataset_info.json"):
      with open(tmp / file_name, "rb") as f:
        os.fsync(f.fileno())
      os.replace(tmp / file_name, out / file_name)
    tmp.rmdir()
