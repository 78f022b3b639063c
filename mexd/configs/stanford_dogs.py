"""Fine-grained recipes on Stanford Dogs (tfds stanford_dogs, 120 classes).

The CUB-200 recipe (mexd/configs/cub200.py; same args) on the dogs:

  python -m mexd.train --config=stanford_dogs           # MATE
  python -m mexd.train --config=stanford_dogs:method=eed
"""

from mexd.configs import cub200


def get_config(arg=None):
  c = cub200.get_config(arg)
  c.data.name = "tfds:stanford_dogs"
  c.data.val_size = 1200  # 10 per class.
  return c
