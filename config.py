"""Project configuration used by the scripts when ``--config`` is not given.

Edit this file (or pass ``--config=my.json`` / ``--config=glas``) to train on
your own annotations. Every field is documented in ``hovercrypt/config.py``.
"""

from hovercrypt.config import Config
from hovercrypt.presets import glas_config

#: GlaS: 0.465 um/px images processed at 0.93 um/px, types benign / malignant.
CONFIG: Config = glas_config()
