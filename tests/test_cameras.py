"""Physical cameras: a reader thread, frames stamped as they arrive, resized to the feature size,
RGB; a stale frame is an error; the video-file camera plays a file at its rate and loops."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from robodiff.data.video import write_video
from robodiff.hal.base import StaleFrameError
from robodiff.hal.cameras import VideoFileCamera, make_camera
from robodiff.hal.cameras.reader import ThreadedCamera
from tests.emulated_arm import FakeClock

COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]


@pytest.fixture
def video(tmp_path):
    """Four 64x48 frames of solid colours at 10 fps."""
    frames = np.array([np.full((48, 64, 3), c, np.uint8) for c in COLORS])
    return write_video(tmp_path / "cam.mp4", frames, fps=10)


def test_a_video_file_plays_at_its_rate_resized_and_looped(video):
    clock = FakeClock()
    stamps = []

    def sleep(seconds):  # pacing on the test's clock: the reader runs as fast as it decodes
        clock.advance(seconds)

    camera = VideoFileCamera("front", video, 32, 24, fps=10, now=clock, sleep=sleep)
    start = clock.t
    with camera:
        while camera.frames < 10:
            frame, stamp = camera.read_latest()
            stamps.append(stamp)
        assert camera.shape == (24, 32, 3) and frame.shape == (24, 32, 3) and frame.dtype == np.uint8
        k = round((stamp - start) * 10)  # frame k (1-based) was delivered k / fps after the start
        assert stamp == pytest.approx(start + k / 10)
        np.testing.assert_allclose(frame.reshape(-1, 3).mean(axis=0), COLORS[(k - 1) % 4], atol=8)  # RGB
    assert np.all(np.diff(stamps) >= 0)


class StoppingCamera(ThreadedCamera):
    """Delivers one frame, then nothing (a camera pulled out)."""

    def __init__(self, now):
        super().__init__("wrist", 8, 6, now)
        self.release = threading.Event()

    def _open(self):
        self.given = False

    def _grab(self):
        if self.given:
            self.release.wait()
            return None
        self.given = True
        return np.zeros((6, 8, 3), np.uint8)

    def _close(self):
        self.release.set()


def test_a_frame_older_than_accepted_is_an_error():
    clock = FakeClock()
    camera = StoppingCamera(clock)
    with camera:
        _, stamp = camera.read_latest(max_age_s=0.1)
        clock.advance(0.0625)
        assert camera.read_latest(max_age_s=0.1)[1] == stamp
        clock.advance(0.0625)
        with pytest.raises(StaleFrameError, match="wrist: the newest frame is 125 ms old \\(at most 100 ms "
                                                  "accepted\\): is the camera still connected"):
            camera.read_latest(max_age_s=0.1)


def test_which_camera_a_yaml_entry_makes(video, tmp_path):
    entry = {"camera": "front", "width": 32, "height": 24, "fps": 10, "max_age_ms": 100}
    assert isinstance(make_camera("front", {**entry, "path": str(video)}), VideoFileCamera)
    with pytest.raises(Exception, match="video file .*nope.mp4 not found"):
        make_camera("front", {**entry, "path": str(tmp_path / "nope.mp4")})
    with pytest.raises(Exception, match="cannot open camera 57 .*robot.cameras.<name>.index="):
        make_camera("front", {**entry, "index": 57}).connect()
