"""CIFAR-10 recipes: the CIFAR-100 ones on 10 classes (ERDE's data sets).

  python -m mexd.train --config=cifar10:method=ce --workdir=runs/c10-teacher
  python -m mexd.train --config=cifar10:method=erde,student=True \
      --config.teacher_workdir=runs/c10-teacher
"""

from mexd.configs import cifar100


def get_config(arg=None):
  c = cifar100.get_config(arg)
  c.data.name = "cifar10"
  return c
