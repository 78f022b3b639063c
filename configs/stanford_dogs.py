"""Fine-grained recipes on Stanford Dogs (tfds stanford_dogs, 120 classes).

The CUB-200 recipe (configs/cub200.py; same args) on the dogs:

  python -m mexd.train --config=configs/stanford_dogs.py           # MATE
  python -m mexd.train --config=configs/stanford_dogs.py:method=eed
"""

from mexd import config_lib

cub200 = config_lib.load_sibling(__file__, "cub200")


def get_config(arg=None):
  c = cub200.get_config(arg)
  c.data.name = "tfds:stanford_dogs"
  c.data.val_size = 1200  # 10 per class.
  return c
