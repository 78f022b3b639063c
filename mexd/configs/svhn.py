"""SVHN (tfds svhn_cropped), ERDE's third data set: no flips for digits.

  python -m mexd.train --config=svhn:method=ce --workdir=runs/svhn-teacher
  python -m mexd.train --config=svhn:method=erde,student=True \
      --config.teacher_workdir=runs/svhn-teacher
"""

from mexd import config_lib
from mexd.configs import cifar100


def get_config(arg=None):
  a = config_lib.parse_arg(arg, **cifar100.ARGS)
  c = cifar100.build(a, epochs=40, milestones=(20, 30))
  c.data.name = "tfds:svhn_cropped"
  c.augment.flip = False
  return c
