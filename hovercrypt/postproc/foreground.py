"""Which map pixels a family's post-processing may put in a crypt (the registry's ``map_foreground``).

The whole-slide engine runs only the network tiles that touch tissue and then
*follows* the predicted crypts into neighbouring tiles
(:class:`hovercrypt.infer.tile_cache.CachedSource`): a tile is run when
foreground reaches it. The test must therefore be the post-processing's own
first step, with its own threshold, so that every pixel that could end up in
an instance is seen.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def hovernet_foreground(maps: Mapping[str, np.ndarray], params: Mapping[str, Any]) -> np.ndarray:
    """bool (H, W): NP probability >= ``np_thresh`` (stage 1 of :mod:`hovercrypt.postproc.hv`)."""
    np_map = np.asarray(maps["np"])
    prob = np_map[..., 0] if np_map.ndim == 3 else np_map
    return prob >= np.float32(params["np_thresh"])


def semantic_foreground(maps: Mapping[str, np.ndarray], params: Mapping[str, Any]) -> np.ndarray:
    """bool (H, W): P(crypt) (+ P(boundary)) > ``unet_fg_thresh``, as :mod:`hovercrypt.postproc.semantic`."""
    prob = np.asarray(maps["seg"], np.float32)
    return prob[..., 1:].sum(-1) > np.float32(params["unet_fg_thresh"])
