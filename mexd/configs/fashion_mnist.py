"""Fashion-MNIST (official IDX files, Debian package dataset-fashion-mnist).

The project's reference data set for comparing methods on CPU:

  python -m mexd.train --config=fashion_mnist                    # P&L
  python -m mexd.train --config=fashion_mnist:method=eed
  python -m mexd.train --config=fashion_mnist:method=pl,setting=limited
  # ERDE / KD: train a teacher, then a reduced student from it.
  python -m mexd.train --config=fashion_mnist:method=ce \
      --workdir=runs/fm-teacher
  python -m mexd.train --config=fashion_mnist:method=erde,student \
      --config.teacher_workdir=runs/fm-teacher --workdir=runs/fm-erde

(In a checkout, `--config=configs/fashion_mnist.py:...` is the same recipe.)

Args (comma separated after ':'; a bare word is a boolean set to true or a
value of `setting`):
  method: any name of mexd.losses.method_names() (default pl).
  setting: "full" (default) or "limited", the data-limited setting of
    Phuong & Lampert: 100 labeled images per class; the rest of train is the
    unlabeled pool. With method=pl the semi-supervised variant distils on 64
    unlabeled images of every batch (semisup=False: labeled images only).
  semisup: in the limited setting, add unlabeled rows to every batch.
  student: the width-halved student network (ERDE/KD), else the full one.
  epochs: number of epochs (0: 20, ~90 s each on 2 idle CPU cores;
    limited: 100 epochs of 1,000 labeled images).
  runlocal: 1 epoch, small batches (smoke test).
"""

from mexd import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, **config_lib.recipe_args(
      method="pl", setting=config_lib.Choice("full", ("full", "limited")),
      semisup=True))
  c = config_lib.base_config()
  c.data.name = "fashion_mnist"
  c.data.val_size = 5000
  c.model.name = "small_cnn"
  # 4 exits at 28, 14, 7 and 4 pixels; 12.3 M MACs per image (student 4.0 M).
  c.model.kwargs.widths = (8, 16, 32, 64) if a.student else (16, 32, 64, 128)
  c.model.kwargs.strides = (1, 2, 2, 2)
  c.model.kwargs.head_features = 64
  # Exit heads with a strided 3x3 conv before pooling and max-pool
  # down-sampling: the best of three variants on validation in the
  # data-limited ablation (docs/results_fashion_mnist_limited_arch.md).
  c.model.kwargs.head = "conv"
  c.model.kwargs.downsample = "maxpool"
  c.augment.crop_pad = 2
  c.augment.flip = True
  c.method = a.method
  c.batch_size = 128
  c.eval_batch_size = 1000
  c.num_epochs = 20
  c.optimizer.lr = 0.05
  c.optimizer.weight_decay = 5e-4
  c.log_every_steps = 50
  c.eval_every_epochs = 2
  c.ckpt_every_steps = 1000
  if a.setting == "limited":
    c.data.labeled_per_class = 100
    c.data.unlabeled_pool = True
    if a.semisup and a.method == "pl":
      c.data.unlabeled_batch = 64
    c.num_epochs = 100
    c.eval_every_epochs = 20
  return config_lib.finish_recipe(c, a)
