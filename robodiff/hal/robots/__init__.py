"""Physical robots: the SO-101 follower arm on its servo bus (`SO101Follower`, driver `feetech`)."""

from robodiff.hal.robots.so101 import SO101Follower

__all__ = ["SO101Follower"]
