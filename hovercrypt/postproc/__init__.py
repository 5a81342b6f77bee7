"""Post-processing: network maps -> crypt instances, and per-instance info.

- :func:`instances_from_maps`: HoVer-Net NP + HV maps -> int32 instance map
  (numba bucket-queue watershed).
- :func:`maps_to_instances`: dispatch on the architecture (HoVer-Net or UNet).
- :func:`instance_info`: bbox, centroid, contour, area, type of every instance
  in one pass.
- :func:`hovercrypt.postproc.watershed.watershed`: the general marker-controlled
  watershed used underneath (energy, markers, mask -> labels).
"""

from hovercrypt.postproc.hv import HV_PARAMS, instances_from_maps, maps_to_instances
from hovercrypt.postproc.info import instance_info

__all__ = ["HV_PARAMS", "instance_info", "instances_from_maps", "maps_to_instances"]
