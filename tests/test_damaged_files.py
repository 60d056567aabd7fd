"""Shards damaged after conversion: `verify` names them, readers refuse them.

Each test copies one small DHF1K conversion and damages one shard itself
(a flipped byte, a truncated copy), as a bad disk or an interrupted copy
would.
"""

import json
import pathlib
import shutil

import numpy as np
import pytest

from diffsal_jax.data.prep import cli as data_prep_cli
from diffsal_jax.data import manifest as manifest_lib
from diffsal_jax.data import shards
from diffsal_jax.data.prep import verify
from diffsal_jax.evaluation import evaluate
from diffsal_jax.data import input_pipeline
from diffsal_jax.evaluation import predictions
from diffsal_jax.evaluation import release_ground_truth
from tests import synthetic_data as sd

# 20 frames: one train clip and four val clips of the tiny model's 8 frames.
NUM_FRAMES = 20
VIDEO, SHARD = "DHF1K/601", "DHF1K__601.array_record"   # the val video
# A byte inside the frame records (the shard's first 64 KiB hold the data).
FLIPPED_BYTE = 20000
CUT_BYTES = 100   # a copy that stopped 100 bytes short


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  root = tmp_path_factory.mktemp("damaged")
  raw = sd.make_dhf1k(root / "raw", "video", NUM_FRAMES)
  status, log = sd.convert_quietly("dhf1k", raw, root / "intact")
  assert status == 0, log
  return root


def _copy(converted, tmp_path, damage: str | None = None) -> pathlib.Path:
  out = tmp_path / "shards"
  shutil.copytree(converted / "intact", out)
  path = out / manifest_lib.SHARD_DIR / SHARD
  data = bytearray(path.read_bytes())
  if damage == "flip":
    data[FLIPPED_BYTE] ^= 0x01
  elif damage == "flip_ground_truth":   # in the first frame record's map (frames are jpeg)
    data[data.index(b"\x89PNG\r\n") + 16] ^= 0x01
  elif damage == "truncate":
    data = data[:len(data) - CUT_BYTES]
  path.write_bytes(bytes(data))
  return out


def _verify_cli(out, capsys, *extra) -> tuple[int, list[str]]:
  status = data_prep_cli.main(["verify", str(out), "--noprogress", *extra])
  return status, capsys.readouterr().out.splitlines()


def test_commit_records_the_shard_checksum(converted):
  manifest = manifest_lib.load_manifest(converted / "intact")
  assert len(manifest.videos) == 4
  for entry in manifest.videos:
    path = converted / "intact" / manifest_lib.SHARD_DIR / entry.shard
    assert (entry.shard_sha256, entry.shard_bytes) == shards.file_checksum(path)
    assert entry.shard_bytes == path.stat().st_size and len(entry.shard_sha256) == 64


def _written_size(converted) -> int:
  return (converted / "intact" / manifest_lib.SHARD_DIR / SHARD).stat().st_size


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_verify_names_exactly_the_damaged_shard(converted, tmp_path, capsys, damage):
  status, lines = _verify_cli(converted / "intact", capsys)
  assert status == 0 and lines[0].endswith(
      "4 shards, 4 checked by sha256 and size, 0 by reading every record; 0 damaged")

  out = _copy(converted, tmp_path, damage)
  status, lines = _verify_cli(out, capsys, "--workers", "2")
  assert status == 1
  assert lines[0].endswith("4 checked by sha256 and size, 0 by reading every record; 1 damaged")
  rows = [line for line in lines if ".array_record" in line and "Fix" not in line]
  assert len(rows) == 1
  shard, video, *text = rows[0].split()
  assert (shard, video) == (str(out / "shards" / SHARD), VIDEO)
  size = _written_size(converted)
  expected = ("(same size: bytes changed)" if damage == "flip" else
              f"{size - CUT_BYTES} bytes, the conversion wrote {size}")
  assert " ".join(text).endswith(expected)
  assert lines[-1].startswith("Fix: delete the damaged shards and re-run "
                              f"`python -m data_prep convert --resume --dst {out} ...`")


def test_verify_without_checksums_reads_every_record(converted, tmp_path, capsys):
  """A manifest written before shard checksums: the records are read instead."""
  out = _copy(converted, tmp_path, "flip")
  path = out / manifest_lib.MANIFEST_NAME
  data = json.loads(path.read_text())
  for video in data["videos"]:
    del video["shard_sha256"], video["shard_bytes"]
  path.write_text(json.dumps(data))
  checks = verify.verify(out, workers=1, progress=False)
  assert [c.method for c in checks] == [verify.BY_RECORDS] * 4
  assert [(c.video, c.shard.name) for c in checks if c.problem] == [(VIDEO, SHARD)]
  assert "Corrupted Riegeli/records file: chunk data hash mismatch" in next(
      c.problem for c in checks if c.problem)
  status, lines = _verify_cli(out, capsys)
  assert status == 1 and "4 manifest entries have no shard checksum" in lines[1]


def _val_batches(out, num_workers: int = 0) -> list:
  config = sd.pipeline_config(out, "dhf1k")
  config.data.num_threads, config.data.num_workers = 1, num_workers
  return list(input_pipeline.create_eval_dataset(config, "val"))


def test_pipeline_names_the_flipped_shard_and_its_video(converted, tmp_path):
  assert len(_val_batches(converted / "intact")) == 2   # 4 clips, batches of 2
  out = _copy(converted, tmp_path, "flip")
  with pytest.raises(shards.DamagedShardError) as error:
    _val_batches(out)
  message = str(error.value)
  assert message.startswith(f"{out / 'shards' / SHARD} (video {VIDEO}) is damaged: "
                            "Corrupted Riegeli/records file: chunk data hash mismatch")
  assert f"re-run `python -m data_prep convert --resume --dst {out} ...`" in message
  assert isinstance(error.value.__cause__, RuntimeError)   # the reader's own error


def test_truncated_shard_is_refused_before_any_read(converted, tmp_path):
  out = _copy(converted, tmp_path, "truncate")
  manifest, size = manifest_lib.load_manifest(out), _written_size(converted)
  with pytest.raises(shards.DamagedShardError,
                     match=rf"^{out / 'shards' / SHARD} \(video {VIDEO}\) is damaged: "
                     rf"{size - CUT_BYTES} bytes, the conversion wrote {size}\. Fix"):
    shards.ShardStore(out, manifest)
  # The other videos are still readable on their own.
  others = [i for i, v in enumerate(manifest.videos) if v.key != VIDEO]
  store = shards.ShardStore(out, manifest, videos=others)
  assert store.frames_uint8(others[0], [1, 2]).shape == (2, *sd.MODEL_HW, 3)


def test_evaluate_on_damaged_shards_names_the_shard(converted, tmp_path, capsys):
  # Evaluation reads only the ground-truth records (maps, fixations).
  out = _copy(converted, tmp_path, "flip_ground_truth")
  raw = release_ground_truth.Dhf1kRawSource(converted / "raw")
  rng = np.random.default_rng(0)
  for video in raw.videos(None):
    for frame in raw.frame_ids(video):
      predictions.save_prediction(tmp_path / "pred", "dhf1k", video, frame,
                                  rng.random((30, 48)))
  status = evaluate.main(["--pred", str(tmp_path / "pred"), "--data", str(out),
                          "--dataset", "dhf1k", "--workers", "1", "--noprogress",
                          "--out", str(tmp_path / "metrics")])
  error = capsys.readouterr().err.strip().splitlines()[-1]
  assert status == 2
  assert error.startswith(f"error: {out / 'shards' / SHARD} (video {VIDEO}) is damaged: "
                          "Corrupted Riegeli/records file")
  assert not list(tmp_path.glob("metrics*"))
