"""ImageNet (ILSVRC-2012) at 224 px through the streaming pipeline.

  python -m mexd.train --config=imagenet                 # MSDNet, P&L
  python -m mexd.train --config=imagenet:eed             # ResNet-50, EED
  python -m mexd.train --config=imagenet:method=ce,arch=msdnet
  python -m mexd.train --config=imagenet:runlocal --config.data.data_dir=D

Data: tfds `imagenet2012` in the array_record format (docs/data.md: the two
archives in DIR/downloads/manual/, then `tfds build imagenet2012
--file_format=array_record --data_dir=DIR`), read record by record by
`mexd.data.stream` (data.stream=True): each host reads its share of every
batch, JPEG decoding and the Inception random-resized crop (area 8-100 %,
aspect 3/4-4/3) run in `data.workers` worker processes; evaluation resizes
and center-crops (crop fraction 0.875: 256 -> 224). 10,000 train images
are held out for validation; tfds' "validation" split is the test set.

Recipes (docs/methods.md):
- arch=msdnet (default for pl / pl_const): Huang et al.'s ImageNet MSDNet
  (`msdnet_imagenet`: 4 scales, 5 exits, 4 layers to the first exit and
  between exits), SGD 0.1 Nesterov momentum 0.9, wd 1e-4, batch 256, 90
  epochs, x0.1 at epochs 30 and 60 (Huang et al.'s schedule), P&L's loss
  scale 2 * n / E with E = 5 exits.
- arch=resnet50 (default for the other methods): multi-exit ResNet-50
  (ImageNet stem, an exit after each of the four stages, separable BYOT
  heads), SGD 0.1 momentum 0.9, wd 1e-4, batch 256, 90 epochs, x0.1 at 30,
  60 and 80. Learning rate scales linearly with the batch (0.1 * B / 256).

Args: method (default pl), arch (msdnet|resnet50; default by method),
batch (global batch, default 256), warmup (epochs of linear warm-up, 0),
ls (label smoothing of the methods' cross-entropy terms, 0; e.g. 0.1),
bf16 (bfloat16 compute, parameters float32; default on, off with
runlocal), workers (decoding processes per host, default 16), epochs (0:
90), student (width-halved ResNet-50 for erde/kd), runlocal (64 px, batch
16, 1 epoch, float32, no worker processes: a CPU smoke test of the whole
path, e.g. on `mexd.data.mock.write_tfds(..., "imagenet2012", ...)` data).
"""

from mexd import config_lib
from mexd import errors

ARCHS = ("msdnet", "resnet50")
MEAN = (0.485, 0.456, 0.406)  # ImageNet channel statistics in [0, 1] units.
STD = (0.229, 0.224, 0.225)


def get_config(arg=None):
  a = config_lib.parse_arg(arg, **config_lib.recipe_args(
      method="pl", arch=config_lib.Choice("auto", ("auto",) + ARCHS),
      batch=256, warmup=0.0, ls=0.0, bf16=True, workers=16))
  arch = a.arch
  if arch == "auto":
    arch = "msdnet" if a.method in ("pl", "pl_const") else "resnet50"
  if a.batch <= 0 or a.workers < 0 or a.warmup < 0 or not 0 <= a.ls < 1:
    raise errors.InputError(
        f"imagenet: batch must be > 0, workers and warmup >= 0, ls in [0, "
        f"1) (got batch={a.batch}, workers={a.workers}, warmup={a.warmup}, "
        f"ls={a.ls})")
  c = config_lib.base_config()
  c.data.name = "tfds:imagenet2012"
  c.data.stream = True
  c.data.image_size = 224
  c.data.val_size = 10000
  c.data.workers = a.workers
  c.data.read_threads = 16
  c.data.crop_scale = (0.08, 1.0)
  c.data.crop_ratio = (3 / 4, 4 / 3)
  c.data.crop_fraction = 0.875
  c.data.mean, c.data.std = MEAN, STD
  c.augment.crop_pad = 0  # The random-resized crop is the host's.
  c.augment.flip = True
  c.method = a.method
  c.model.dtype = "bfloat16" if a.bf16 else "float32"
  c.batch_size = a.batch
  c.eval_batch_size = 500
  c.num_epochs = 90
  lr = 0.1 * a.batch / 256
  if arch == "msdnet":
    c.model.name = "msdnet_imagenet"
    c.optimizer.update(dict(name="sgd", lr=lr, momentum=0.9, nesterov=True,
                            weight_decay=1e-4, schedule="step",
                            milestones=(30, 60), gamma=0.1))
  else:
    c.model.name = "resnet50_imagenet"
    if a.student:
      c.model.kwargs.widths = (128, 256, 512, 1024)
      c.model.kwargs.mid_widths = (32, 64, 128, 256)
    c.optimizer.update(dict(name="sgd", lr=lr, momentum=0.9,
                            nesterov=False, weight_decay=1e-4,
                            schedule="step", milestones=(30, 60, 80),
                            gamma=0.1))
  c.optimizer.warmup_epochs = float(a.warmup)
  if a.ls:
    c.loss[a.method].label_smoothing = float(a.ls)
  if a.method in ("pl", "pl_const"):
    c.loss[a.method].global_scale = 2 * 5 / 5
  c.log_every_steps = 100
  c.eval_every_epochs = 5
  c.ckpt_every_steps = 2000
  if a.runlocal:
    c.data.image_size = 64
    c.data.val_size = 8
    c.data.workers = 0
    c.model.dtype = "float32"
  return config_lib.finish_recipe(c, a, eval_batch_size=16)
