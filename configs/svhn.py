"""SVHN (tfds svhn_cropped), ERDE's third data set: no flips for digits.

  python -m mexd.train --config=configs/svhn.py:method=ce --workdir=runs/svhn-teacher
  python -m mexd.train --config=configs/svhn.py:method=erde,student=True \
      --config.teacher_workdir=runs/svhn-teacher
"""

from mexd import config_lib

cifar100 = config_lib.load_sibling(__file__, "cifar100")


def get_config(arg=None):
  c = cifar100.get_config(arg)
  c.data.name = "tfds:svhn_cropped"
  c.augment.flip = False
  c.num_epochs = 40
  c.optimizer.milestones = (20, 30)
  return c
