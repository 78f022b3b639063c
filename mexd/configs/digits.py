"""The embedded default: scikit-learn's 8x8 digits, a 3-exit CNN, P&L.

  python -m mexd.train                                  # this recipe
  python -m mexd.train --config=digits:method=ce
  python -m mexd.train --config=digits:limited          # semi-supervised P&L
  python -m mexd.train --config=digits:limited,semisup=False   # labeled only

Args (comma separated after ':'; a bare word is a boolean set to true or a
value of `setting`):
  method: any name of mexd.losses.method_names() (default pl).
  setting: "full" (default) or "limited": 10 labeled images per class, the
    rest of train an unlabeled pool.
  semisup: in the limited setting, 32 unlabeled images of every 64-image
    batch (only the distillation terms see them; default true).
  student: the student network (widths 16, 32, 64) for erde/kd.
  epochs: number of epochs (0: 40, limited: 200).
  runlocal: 1 epoch, small batches (smoke test).
"""

from mexd import config_lib as common


def get_config(arg=None):
  a = common.parse_arg(arg, **common.recipe_args(
      method="pl", setting=common.Choice("full", ("full", "limited")),
      semisup=True))
  c = common.base_config()
  c.data.name = "digits"
  c.data.val_size = 180
  c.model.name = "digits_cnn"
  c.augment.crop_pad = 1
  c.method = a.method
  if a.student:
    c.model.kwargs.widths = (16, 32, 64)
  c.batch_size = 64
  c.num_epochs = 40
  c.optimizer.lr = 0.05
  c.eval_every_epochs = 10
  c.log_every_steps = 20
  if a.setting == "limited":
    c.data.labeled_per_class = 10
    c.data.unlabeled_pool = a.semisup
    c.data.unlabeled_batch = 32 if a.semisup else 0
    c.num_epochs = 200
  return common.finish_recipe(c, a)
