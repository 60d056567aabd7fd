"""Evaluation ground truth from the shards of `python -m data_prep convert`.

The shards keep each frame's original map file byte for byte and its
fixations as points at the original resolution, so `ShardGroundTruth` gives
the same arrays as the raw readers of `release_ground_truth` (same video
names too: DHF1K videos are `NNNN`, as the annotation folders; AV videos
keep their release names). Test videos of AV fold k come from the manifest's folds,
which the converter parsed from the same STAViS fold lists.
"""

from __future__ import annotations

import io
import pathlib
from collections.abc import Sequence

import numpy as np

from diffsal_jax.data import layouts
from diffsal_jax.data import manifest as manifest_lib
from diffsal_jax.data import shards
from diffsal_jax.evaluation import ground_truth


class ShardGroundTruth(ground_truth.GroundTruthSource):
  """Maps and fixations of one dataset from an ArrayRecord conversion.

  Raises FileNotFoundError without OUT/manifest.json, ValueError for an
  unknown `dataset`, a conversion of the other family or one without maps.
  """

  def __init__(self, shards_dir: str | pathlib.Path, dataset: str):
    self.shards_dir = pathlib.Path(shards_dir)
    self.dataset = dataset
    self.folder = ground_truth.release_folder(dataset)
    self._manifest = manifest_lib.load_manifest(self.shards_dir)
    family = "dhf1k" if dataset == "dhf1k" else "av"
    manifest_path = self.shards_dir / manifest_lib.MANIFEST_NAME
    if self._manifest.dataset != family:
      raise ValueError(
          f"{manifest_path} is a {self._manifest.dataset!r} conversion; "
          f"--dataset {dataset} needs `python -m data_prep convert "
          f"--dataset {family}`")
    # Video name (as the raw readers name it) -> index in the manifest.
    self._index = {
        self._video_name(entry.name): index
        for index, entry in enumerate(self._manifest.videos)
        if entry.dataset == self.folder and entry.has_maps}
    if not self._index:
      raise ValueError(f"{manifest_path} lists no {self.folder} video with "
                       f"saliency maps; convert a release that has them")
    self._store: shards.ShardStore | None = None

  def _video_name(self, name: str) -> str:
    """DHF1K `601` or `0601` -> `0601` (annotation folder); AV unchanged."""
    if self.dataset == "dhf1k" and name.isdigit():
      return f"{int(name):04d}"
    return name

  def __getstate__(self) -> dict:
    # Workers reopen the shards themselves (see `_shard_store`).
    return {**self.__dict__, "_store": None}

  def _shard_store(self) -> shards.ShardStore:
    if self._store is None:
      self._store = shards.ShardStore(self.shards_dir, self._manifest,
                                      videos=list(self._index.values()))
    return self._store

  def _entry_index(self, video: str) -> int:
    index = self._index.get(self._video_name(video))
    if index is None:
      raise FileNotFoundError(
          f"{self.folder} video {video} has no ground truth in "
          f"{self.shards_dir / manifest_lib.MANIFEST_NAME} (left out by the "
          f"conversion? see {self.shards_dir}/conversion_report.json)")
    return index

  def videos(self, fold: int | None) -> list[str]:
    if fold is None:
      return sorted(self._index)
    if self.dataset == "dhf1k":
      raise ValueError("DHF1K has no folds; drop --fold")
    test_list = layouts.fold_list_names(self.folder, fold)["test"]
    if test_list not in self._manifest.fold_lists:
      raise FileNotFoundError(
          f"fold list {test_list} was not found when {self.shards_dir} was "
          f"converted: put it in <src>/fold_lists and convert again")
    prefix = f"{self.folder}/"
    test_keys = self._manifest.folds.get(str(fold), {}).get("test", [])
    return [key[len(prefix):] for key in test_keys if key.startswith(prefix)]

  def frame_ids(self, video: str) -> list[int]:
    # The converter keeps a video only with one map per frame 1..N (N from
    # the fold list for AV sets), the frames the raw readers list.
    entry = self._manifest.videos[self._entry_index(video)]
    return list(range(1, entry.num_frames + 1))

  def frame_count_note(self, video: str) -> str:
    # The converter's note for the same cut (kind `frame_count_adjusted`).
    key = self._manifest.videos[self._entry_index(video)].key
    return "; ".join(issue["detail"] for issue in self._manifest.issues
                     if issue["kind"] == "frame_count_adjusted"
                     and issue["video"] == key)

  def _ground_truth(self, video: str, frame_id: int) -> shards.GroundTruth:
    index = self._entry_index(video)
    num_frames = self._manifest.videos[index].num_frames
    if not 1 <= frame_id <= num_frames:
      raise KeyError(f"{self.folder} video {video} has frames 1..{num_frames},"
                     f" not {frame_id}")
    return self._shard_store().ground_truth(index, frame_id)

  def read_map(self, video: str, frame_id: int) -> np.ndarray:
    map_file = self._ground_truth(video, frame_id).map_orig
    return ground_truth.read_grey(io.BytesIO(map_file))

  def read_frames(self, video: str, frame_ids: Sequence[int]
                  ) -> list[np.ndarray]:
    # The shards hold every frame, at the conversion's size (model input).
    index = self._entry_index(video)
    num_frames = self._manifest.videos[index].num_frames
    outside = [f for f in frame_ids if not 1 <= f <= num_frames]
    if outside:
      raise KeyError(f"{self.folder} video {video} has frames 1..{num_frames},"
                     f" not {outside}")
    return list(self._shard_store().frames_uint8(index, list(frame_ids)))

  def read_fixations(self, video: str, frame_id: int) -> np.ndarray:
    entry = self._manifest.videos[self._entry_index(video)]
    if not entry.has_fixations:
      raise ValueError(f"{self.folder} video {video} was converted without "
                       f"fixation files ({self.shards_dir}); add them to the "
                       f"release and convert again")
    points = self._ground_truth(video, frame_id).points
    fixations = np.zeros(entry.orig_hw, bool)
    fixations[points[:, 0], points[:, 1]] = True
    return fixations
