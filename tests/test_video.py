from pathlib import Path

import numpy as np
import pytest

from robodiff.data.video import FrameSampler, iter_video, read_video, write_video
from robodiff.errors import StoreError
from tests.importer_fixtures import frame_index_of, grey_frames


def test_round_trip_keeps_odd_size_order_and_timestamps(tmp_path: Path) -> None:
    frames = grey_frames(20, hw=(17, 33))
    path = write_video(tmp_path / "v.mp4", frames, fps=10)
    decoded, times = read_video(path)
    assert decoded.shape == (20, 17, 33, 3) and decoded.dtype == np.uint8
    np.testing.assert_array_equal(frame_index_of(decoded), np.arange(20))
    np.testing.assert_allclose(times, np.arange(20) / 10, atol=1e-6)


def test_smooth_content_survives_compression_closely(tmp_path: Path) -> None:
    y, x = np.mgrid[0:32, 0:48]
    frame = np.stack([x * 5, y * 7, (x + y) * 3], axis=-1).astype(np.uint8)
    decoded, _ = read_video(write_video(tmp_path / "g.mp4", np.stack([frame] * 3), fps=15))
    assert np.abs(decoded.astype(int) - frame.astype(int)).mean() < 3


def test_single_channel_frames_become_rgb(tmp_path: Path) -> None:
    frames = grey_frames(4)[..., :1]
    decoded, _ = read_video(write_video(tmp_path / "m.mp4", frames, fps=5))
    assert decoded.shape[-1] == 3
    np.testing.assert_array_equal(frame_index_of(decoded), np.arange(4))


def test_iter_video_streams_the_same_frames(tmp_path: Path) -> None:
    path = write_video(tmp_path / "s.mp4", grey_frames(6), fps=30)
    frames, times = read_video(path)
    streamed = list(iter_video(path))
    np.testing.assert_array_equal(np.stack([f for f, _ in streamed]), frames)
    np.testing.assert_array_equal([t for _, t in streamed], times)


def test_bad_frames_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="uint8"):
        write_video(tmp_path / "f.mp4", np.zeros((2, 8, 8, 3), np.float32), fps=10)


@pytest.mark.parametrize("content", [None, b"not a video" * 50, "truncated"])
def test_missing_or_corrupt_file_names_it(tmp_path: Path, content: object) -> None:
    path = tmp_path / "bad.mp4"
    if content == "truncated":
        good = write_video(tmp_path / "good.mp4", grey_frames(10), fps=10).read_bytes()
        path.write_bytes(good[: len(good) // 2])
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(StoreError, match=str(path)):
        read_video(path)


def test_sampler_takes_last_frame_at_or_before_each_time(tmp_path: Path) -> None:
    path = write_video(tmp_path / "v.mp4", grey_frames(10), fps=10)
    sampler = FrameSampler(path)
    # 0.2999 is a float32-rounded 0.3: within tolerance it is frame 3, not 2.
    picked = sampler.frames_at(np.array([0.0, 0.05, 0.2999, 0.31, 0.99]))
    np.testing.assert_array_equal(frame_index_of(picked), [0, 0, 3, 3, 9])
    # An earlier time re-opens the file instead of returning a wrong frame.
    np.testing.assert_array_equal(frame_index_of(sampler.frames_at(np.array([0.1]))), [1])
    with pytest.raises(StoreError, match="shorter"):
        sampler.frames_at(np.array([1.05]))
    sampler.close()
