"""CIFAR-100 recipes of the seed papers.

  python -m mexd.train --config=cifar100            # EED, ResNet-18
  python -m mexd.train --config=cifar100:byot
  python -m mexd.train --config=cifar100:mate
  python -m mexd.train --config=cifar100:pl         # MSDNet, P&L
  python -m mexd.train --config=cifar100:method=pl,semisup=True
  python -m mexd.train --config=cifar100:method=erde,student=True \
      --config.teacher_workdir=runs/cifar100-teacher

Data: the official python archive (`cifar100`, see docs/data.md) or tfds
(`--config.data.name=tfds:cifar100`). Recipes (docs/methods.md §1, §2, §5):
- ce / sdn / byot / eed / mate: CIFAR ResNet-18 with an exit after each of
  the four stages (BYOT/EED heads), SGD 0.1, momentum 0.9, wd 5e-4, batch
  128, 200 epochs, x0.1 at epochs 75, 130, 180 (EED's train.py).
- pl / pl_const: MSDNet (11 exits) in the data-limited setting of Phuong &
  Lampert: 100 labeled + 50 validation images per class, SGD 0.1 Nesterov,
  wd 1e-4, batch 64, 300 epochs, x0.1 at 150 and 225, loss scale 2*5/11;
  semisup=True adds the rest of train as the unlabeled pool.
- erde / kd: a width-halved ResNet-18 student from a ResNet-18 teacher
  (train the teacher with method=ce first).

Args (comma separated after ':'; a bare word is a method name or a boolean
set to true): method (default eed), student, semisup (pl only: the rest of
train as the unlabeled pool), epochs (0: the recipe's), runlocal (1 epoch,
batch 16: a smoke test on a laptop). In a checkout,
`--config=configs/cifar100.py:...` is the same recipe.
"""

from mexd import config_lib


ARGS = config_lib.recipe_args(method="eed", semisup=False)


def get_config(arg=None):
  return build(config_lib.parse_arg(arg, **ARGS))


def build(a, *, epochs=200, milestones=(75, 130, 180)):
  """The recipe for parsed args `a`; `epochs` / `milestones` of the ResNets.

  Sibling configs (cifar10, svhn) call this with their own schedule, so
  that `runlocal` still shrinks whatever they set.
  """
  c = config_lib.base_config()
  c.data.name = "cifar100"
  c.data.val_size = 5000
  c.augment.crop_pad = 4
  c.augment.flip = True
  c.method = a.method
  c.model.name = "resnet18_half" if a.student else "resnet18"
  # BYOT/EED exit heads; the ERDE student uses ERDE's heads (BN, ReLU,
  # 2x2 average pool, dropout 0.5, dense).
  c.model.kwargs.head = "erde" if a.student else "byot"
  c.batch_size = 128
  c.eval_batch_size = 500
  c.num_epochs = epochs
  c.optimizer.update(dict(name="sgd", lr=0.1, momentum=0.9, nesterov=False,
                          weight_decay=5e-4, schedule="step",
                          milestones=tuple(milestones), gamma=0.1))
  c.log_every_steps = 100
  c.eval_every_epochs = 10
  c.ckpt_every_steps = 2000
  if a.method in ("pl", "pl_const"):
    c.model.name = "msdnet_cifar"
    c.model.kwargs = config_lib.ml_collections.ConfigDict()
    c.data.labeled_per_class = 100
    c.data.val_size = 5000  # ~50 per class (authors: exactly 50 per class).
    c.data.unlabeled_pool = a.semisup
    c.data.unlabeled_batch = 32 if a.semisup else 0
    c.batch_size = 64
    c.num_epochs = 300
    c.optimizer.update(dict(lr=0.1, nesterov=True, weight_decay=1e-4,
                            milestones=(150, 225)))
    c.loss[a.method].global_scale = 2 * 5 / 11
  return config_lib.finish_recipe(c, a)
