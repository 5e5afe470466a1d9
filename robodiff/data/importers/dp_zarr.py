"""Diffusion-Policy Zarr stores (`data/<key>`, `meta/episode_ends`): directories or `.zarr.zip`."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path

import numpy as np
from numcodecs.errors import UnknownCodecError

from robodiff.data.importers.source import Episode, Source, image_shape, require_action
from robodiff.data.store import EpisodeStore
from robodiff.data.integrity import require_valid
from robodiff.errors import StoreError
from robodiff.features import Feature


def register_optional_codecs() -> None:
    """The reference code's real-robot and robomimic image stores use imagecodecs' JPEG 2000."""
    try:
        from imagecodecs.numcodecs import register_codecs
    except ImportError:
        return
    register_codecs()


def read(src: Path) -> Source:
    register_optional_codecs()
    try:
        store = EpisodeStore.open(src, mode="r")
    except StoreError:
        raise
    except UnknownCodecError as exc:
        raise StoreError(f"{src}: an array needs a codec that is not installed ({exc}); for "
                         f"imagecodecs_* codecs: pip install imagecodecs") from None
    except Exception as exc:  # zarr raises assorted types on malformed array metadata
        raise StoreError(f"{src}: unreadable array metadata ({type(exc).__name__}: {exc})") from None
    try:
        require_action(store.features, str(src))
        # Structure now; chunks decode (and values are checked) as the episodes are read.
        require_valid(store, store.keys, images_uint8=False)
    except BaseException:
        store.close()
        raise
    features = dict(store.features)
    if not store.declared_features:
        # A foreign store's uint8 arrays of per-step shape (C, H, W) are images stored channels-first.
        for key, feat in features.items():
            hwc = image_shape(feat.shape)
            if feat.kind == "lowdim" and hwc is not None and store.array(key).dtype == np.uint8:
                features[key] = Feature("image", hwc, "uint8")
    return Source(origin=str(src), features=features, episodes=_episodes(store),
                  total=store.n_episodes, fps=store.fps, task=store.task, robot=store.robot)


def _episodes(store: EpisodeStore) -> Generator[Episode, None, None]:
    try:
        for k in range(store.n_episodes):
            # read_episode names the damaged chunk file when a chunk does not decode.
            yield Episode(store.read_episode(k), f"{store.path} episode {k}")
    finally:
        store.close()
