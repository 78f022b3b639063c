"""The embedded default: scikit-learn's 8x8 digits, a 3-exit CNN, P&L.

  python -m mexd.train                                   # this config
  python -m mexd.train --config=configs/digits.py --config.method=ce
  python -m mexd.train --config=configs/digits.py:limited --config.method=pl

Arg "limited": 10 labeled images per class, the rest an unlabeled pool that
the semi-supervised P&L variant distils on (half of every batch).
"""

from mexd import config_lib as common


def get_config(arg=None):
  a = common.parse_arg(arg, limited=False)
  c = common.base_config()
  c.data.name = "digits"
  c.data.val_size = 180
  c.model.name = "digits_cnn"
  c.augment.crop_pad = 1
  c.method = "pl"
  c.batch_size = 64
  c.num_epochs = 40
  c.optimizer.lr = 0.05
  c.eval_every_epochs = 10
  c.log_every_steps = 20
  if a.limited:
    c.data.labeled_per_class = 10
    c.data.unlabeled_pool = True
    c.data.unlabeled_batch = 32
    c.num_epochs = 200
  return c
