"""Tests of diffsal_jax.data.input_pipeline on converted synthetic releases."""

import collections
import itertools

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
import threadpoolctl

from diffsal_jax.data import batch as batch_lib
from diffsal_jax.data import clip_sampling
from diffsal_jax.data import layouts
from tools import reference_loader
from diffsal_jax.data import input_pipeline as ip
from tests import synthetic_data as sd


@pytest.fixture(scope="module")
def av_shards(tmp_path_factory):
  raw = sd.make_av(tmp_path_factory.mktemp("av_raw"))
  out = tmp_path_factory.mktemp("av_out")
  assert sd.convert_quietly("av", raw, out)[0] == 0
  return raw, out


@pytest.fixture(scope="module")
def dhf1k_shards(tmp_path_factory):
  raw = sd.make_dhf1k(tmp_path_factory.mktemp("dhf1k_raw"), "frames")
  out = tmp_path_factory.mktemp("dhf1k_out")
  assert sd.convert_quietly("dhf1k", raw, out, image_format="png")[0] == 0
  return raw, out


def test_dhf1k_clip_sampling_follows_the_published_loader():
  # 16-frame clips every 16 frames below N - 32; target = 9th frame.
  assert clip_sampling.dhf1k_clips(64, 16, "train") == [
      (list(range(1, 17)), 9), (list(range(17, 33)), 25)]
  val = clip_sampling.dhf1k_clips(40, 16, "val")
  assert [c[0][0] for c in val] == list(range(1, 9)) and val[-1][1] == 16
  assert [c[0][0] for c in clip_sampling.dhf1k_clips(40, 16, "test")] == list(range(1, 10))
  assert clip_sampling.dhf1k_clips(32, 8, "train")[1] == (list(range(9, 17)), 13)


def test_av_clip_sampling_follows_the_published_loader():
  # Windows of 90 frames every 74, centre 16 frames, rounded-half-up median.
  assert clip_sampling.av_clips(100, 16, exhaustive=False) == [
      (list(range(38, 54)), 46), (list(range(80, 96)), 88)]
  test = clip_sampling.av_clips(100, 16, exhaustive=True)
  assert len(test) == 99 and test[0] == (list(range(1, 17)), 9)
  assert test[85] == (list(range(86, 101)) + [86], 93)     # looped when short
  assert test[98] == ([99, 100] * 8, 100)
  assert clip_sampling.av_clips(1, 16, exhaustive=True) == []


def test_normalisation_matches_the_published_transforms():
  assert batch_lib.AV_MEAN == (114.7748, 107.7354, 99.475)
  assert batch_lib.AV_STD == (38.7568578, 37.88248729, 40.02898126)
  rng = np.random.default_rng(0)
  every_value = np.arange(256 * 3, dtype=np.uint8).reshape(1, 16, 16, 3)
  for frames in (every_value, rng.integers(0, 256, (2, 3, 6, 10, 3), np.uint8),
                 rng.integers(0, 256, (2, 5, 5, 3), np.uint8)):   # odd size: other path
    for family in ("dhf1k", "av"):
      np.testing.assert_array_equal(batch_lib.normalise(frames, family),
                                    reference_loader.published_normalise(frames, family))


def _check_against_reference(config, raw, split, stored_format):
  """Each example of the eval pipeline equals the raw-file reference loader."""
  manifest = ip.validate(config)
  table = ip.clip_table(manifest, config, split)
  reference = reference_loader.ReferenceLoader(
      layouts.discover(manifest.dataset, raw), sd.MODEL_HW, stored_format)
  audio_spec = None
  if config.model.variant == "av":
    audio_spec = (batch_lib.num_audio_patches(config.model), tuple(config.model.audio_size))
  seen = 0
  for batch in ip.create_eval_dataset(config, split):
    for i in np.flatnonzero(batch["valid"]):
      video, frames, target = table.video[seen], table.frames[seen], table.target[seen]
      assert (batch["video"][i], batch["frame"][i]) == (video, target)
      expected = reference.clip(manifest.videos[video].key, list(frames), target, audio_spec)
      assert set(expected) | {"img"} <= set(batch)
      for key, value in expected.items():
        np.testing.assert_array_equal(batch[key][i], value, err_msg=key)
      seen += 1
  assert seen == len(table)


def test_av_eval_pipeline_round_trip(av_shards):
  raw, out = av_shards
  config = sd.pipeline_config(out, "av", "av")
  config.data.fold = 2
  config.data.av_datasets = ("AVAD",)   # 23 clips of AVAD/clip_01 (audio is slow)
  # The loader runs BLAS on one thread; the reference must too, or the log-mel
  # sums come out in another order (1e-6 differences).
  with threadpoolctl.threadpool_limits(1, "blas"):
    _check_against_reference(config, raw, "test", "jpeg")


def test_dhf1k_eval_pipeline_round_trip_lossless(dhf1k_shards):
  raw, out = dhf1k_shards
  config = sd.pipeline_config(out, "dhf1k")
  _check_against_reference(config, raw, "val", None)
  test_batch = next(iter(ip.create_eval_dataset(config, "test")))
  assert "map" not in test_batch and test_batch["img"].shape == (2, 8, 64, 96, 3)


def test_train_batches_have_the_contract_shapes(av_shards):
  config = sd.pipeline_config(av_shards[1], "av", "av", batch_size=4)
  batch = next(iter(ip.create_train_dataset(config, process_index=1, process_count=2)))
  shapes = {k: (v.shape, v.dtype.name) for k, v in batch.items()}
  assert shapes == {"img": ((2, 8, 64, 96, 3), "float32"), "audio": ((2, 5, 32, 48), "float32"),
                    "map": ((2, 64, 96), "float32"), "fixations": ((2, 64, 96), "uint8"),
                    "video": ((2,), "int32"), "frame": ((2,), "int32")}
  assert 0 < batch["map"].max() <= 1 and set(np.unique(batch["fixations"])) <= {0, 1}


def test_uint8_images_normalise_on_device_to_the_same_values(dhf1k_shards):
  config = sd.pipeline_config(dhf1k_shards[1], "dhf1k")
  floats = next(iter(ip.create_eval_dataset(config, "val")))
  config.data.image_dtype = "uint8"
  raw = next(iter(ip.create_eval_dataset(config, "val")))
  assert raw["img"].dtype == np.uint8
  np.testing.assert_array_equal(np.asarray(batch_lib.normalise_on_device(raw["img"], "dhf1k")),
                                floats["img"])
  np.testing.assert_array_equal(raw["map"], floats["map"])


def _ids(batches):
  return [(int(v), int(f)) for b in batches for v, f in zip(b["video"], b["frame"])]


def test_train_order_is_deterministic_and_seeded(dhf1k_shards):
  config = sd.pipeline_config(dhf1k_shards[1], "dhf1k")
  first = list(itertools.islice(ip.create_train_dataset(config), 6))
  again = list(itertools.islice(ip.create_train_dataset(config), 6))
  for a, b in zip(first, again):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  config.data.seed = 1
  other = _ids(itertools.islice(ip.create_train_dataset(config), 6))
  assert other != _ids(first) and sorted(other) == sorted(_ids(first))


def test_each_epoch_is_a_seeded_permutation_of_the_clips():
  table = ip.ClipTable(np.arange(10, dtype=np.int32), np.zeros((10, 2), np.int32),
                       np.arange(10, dtype=np.int32))
  clips = ip.ShuffledEpochs(table, seed=3, num_epochs=3)
  assert len(clips) == 30
  epochs = [[clips[e * 10 + i]["video"] for i in range(10)] for e in range(3)]
  assert all(sorted(e) == list(range(10)) for e in epochs)
  assert epochs[0] != epochs[1] != epochs[2]
  assert epochs == [[ip.ShuffledEpochs(table, 3, 3)[e * 10 + i]["video"] for i in range(10)]
                    for e in range(3)]
  assert [clips[i]["video"] for i in range(10)] != [
      ip.ShuffledEpochs(table, 4)[i]["video"] for i in range(10)]
  with pytest.raises(IndexError):
    clips[30]


def test_processes_see_disjoint_complete_parts(av_shards):
  config = sd.pipeline_config(av_shards[1], "av", batch_size=2)
  config.data.val_videos_per_dataset = 0
  config.data.num_epochs = 2
  table = ip.clip_table(ip.validate(config), config, "train")
  parts = [_ids(ip.create_train_dataset(config, process_index=p, process_count=2))
           for p in range(2)]
  clips = list(zip(table.video.tolist(), table.target.tolist()))
  everything = collections.Counter(clips * 2)   # two epochs
  assert collections.Counter(parts[0] + parts[1]) == everything
  assert len(parts[0]) == len(parts[1]) == len(table)
  assert ip.num_train_clips(config) == len(table) == 4


def test_eval_padding_gives_every_process_the_same_batches(av_shards):
  config = sd.pipeline_config(av_shards[1], "av", batch_size=4)
  table = ip.clip_table(ip.validate(config), config, "test")
  ids, lengths = [], []
  for p in range(2):
    batches = list(ip.create_eval_dataset(config, "test", process_index=p, process_count=2))
    lengths.append(len(batches))
    for b in batches:
      ids += [(int(v), int(f)) for v, f, ok in zip(b["video"], b["frame"], b["valid"]) if ok]
      assert not b["img"][~b["valid"]].any()
  assert lengths[0] == lengths[1] == -(-len(table) // 4)
  assert sorted(ids) == sorted(zip(table.video.tolist(), table.target.tolist()))


def _assert_same_batches(a, b):
  for x, y in zip(a, b, strict=True):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


def test_iterator_state_resumes_the_same_sequence(dhf1k_shards, tmp_path):
  config = sd.pipeline_config(dhf1k_shards[1], "dhf1k")
  iterator = iter(ip.create_train_dataset(config))
  for _ in range(3):
    next(iterator)
  checkpointer = ocp.Checkpointer(grain.checkpoint.CheckpointHandler())
  checkpointer.save(tmp_path / "it", args=grain.checkpoint.CheckpointSave(iterator))
  expected = [next(iterator) for _ in range(4)]
  restored = iter(ip.create_train_dataset(config))
  checkpointer.restore(tmp_path / "it", args=grain.checkpoint.CheckpointRestore(restored))
  _assert_same_batches([next(restored) for _ in range(4)], expected)


def test_worker_processes_give_the_same_stream_and_state(dhf1k_shards):
  config = sd.pipeline_config(dhf1k_shards[1], "dhf1k")
  in_process = list(itertools.islice(ip.create_train_dataset(config), 5))
  config.data.num_workers = 2
  iterator = iter(ip.create_train_dataset(config))
  _assert_same_batches([next(iterator) for _ in range(2)], in_process[:2])
  state = iterator.get_state()
  resumed = iter(ip.create_train_dataset(config))
  resumed.set_state(state)
  _assert_same_batches([next(resumed) for _ in range(3)], in_process[2:])
  iterator.close()
  resumed.close()


def test_threads_and_worker_processes_give_the_in_process_batches(av_shards):
  """AV evaluation (audio, padding rows, float32 'img'), loaded a batch at a
  time straight into the batch arrays: the same with threads or processes."""
  config = sd.pipeline_config(av_shards[1], "av", variant="av", batch_size=4)
  config.data.image_dtype = "float32"
  in_process = list(ip.create_eval_dataset(config, "test", process_index=1, process_count=2))
  assert not in_process[-1]["valid"].all()   # the last batch has padding rows
  for workers, threads in ((0, 2), (2, 0)):
    config.data.num_workers, config.data.num_threads = workers, threads
    iterator = iter(ip.create_eval_dataset(config, "test", process_index=1, process_count=2))
    batches = list(iterator)
    if threads > 1:
      # Log-mel computed beside another thread differs by up to 1 float32 ulp
      # (measured 4.8e-7 on values near -4; 1 thread: identical); all else exact.
      for got, want in zip(batches, in_process, strict=True):
        np.testing.assert_allclose(got.pop("audio"), want["audio"], rtol=2e-7, atol=5e-7)
      in_process_rest = [{k: v for k, v in b.items() if k != "audio"} for b in in_process]
      _assert_same_batches(batches, in_process_rest)
    else:
      _assert_same_batches(batches, in_process)
    if workers:
      iterator.close()


@pytest.mark.parametrize("field, value, message", [
    ("data.shards", "/nonexistent/shards", "config.data.shards"),
    ("data.dataset", "ucf", "config.data.dataset"),
    ("data.fold", 4, "config.data.fold"),
    ("data.av_datasets", ("DIEM", "Hollywood"), "config.data.av_datasets"),
    ("model.image_size", (224, 384), "config.model.image_size"),
    ("model.variant", "av", "config.model.variant"),
    ("batch_size", 3, "config.batch_size"),
])
def test_config_errors_name_the_field(dhf1k_shards, field, value, message):
  config = sd.pipeline_config(dhf1k_shards[1], "dhf1k")
  section, _, name = field.rpartition(".")
  (config[section] if section else config)[name] = value
  with pytest.raises(ValueError, match=message.replace(".", r"\.")):
    ip.create_train_dataset(config, process_count=2)
