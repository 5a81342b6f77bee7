"""Project configuration used by the scripts when ``--config`` is not given.

Edit this file (or pass ``--config=my.json`` / ``--config=glas``) to train on
your own annotations. Every field is documented in ``hovercrypt/config.py``.
"""

from hovercrypt.config import Config
from hovercrypt.presets import glas_hubmap_config

#: GlaS (0.465 um/px) + HuBMAP crypts (0.4 um/px, ignore masks), processed at 0.93 um/px,
#: types benign / malignant: the configuration of the shipped model.
CONFIG: Config = glas_hubmap_config()
