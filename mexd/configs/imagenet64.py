"""Downsampled ImageNet (tfds imagenet_resized/64x64 or /32x32), 1000 classes.

TinyImageNet-size work (MATE evaluates on TinyImageNet, 64x64 images) and a
stand-in for ImageNet that fits in host memory (1.28 M images of 64x64x3 are
15 GiB as uint8; 224-px ImageNet, ~180 GiB, streams: the `imagenet`
recipe):

  python -m mexd.train --config=imagenet64              # MATE
  python -m mexd.train --config=imagenet64:method=eed
  python -m mexd.train --config=imagenet64:res=32

Data: `tfds build imagenet_resized/64x64 --file_format=array_record
--data_dir=DIR` then `--config.data.data_dir=DIR`; its "validation" split is
the test set here, 10,000 train images are carved out for validation.

Recipe: CIFAR-stem ResNet-18 (stride-1 stem, as for 64x64 TinyImageNet
work) with BYOT heads after each stage, SGD 0.1 momentum 0.9 (Nesterov), wd
5e-4, batch 256, 2 warm-up epochs then cosine over 40 epochs, pad-4 random
crop and flips.

Args: method (default mate), res (64 or 32), student (width-halved student
for erde/kd), epochs (0: 40), runlocal (1 epoch, batch 16).
"""

from mexd import config_lib
from mexd import errors


def get_config(arg=None):
  a = config_lib.parse_arg(arg, **config_lib.recipe_args(
      method="mate", res=64))
  if a.res not in (32, 64):
    raise errors.InputError(f"res must be 32 or 64, got {a.res}")
  c = config_lib.base_config()
  c.data.name = f"tfds:imagenet_resized/{a.res}x{a.res}"
  c.data.val_size = 10000
  c.augment.crop_pad = 4
  c.augment.flip = True
  c.method = a.method
  c.model.name = "resnet18_half" if a.student else "resnet18"
  c.model.kwargs.head = "byot"
  c.batch_size = 256
  c.eval_batch_size = 1000
  c.num_epochs = 40
  c.optimizer.update(dict(name="sgd", lr=0.1, momentum=0.9, nesterov=True,
                          weight_decay=5e-4, schedule="cosine",
                          warmup_epochs=2.0))
  c.log_every_steps = 200
  c.eval_every_epochs = 2
  c.ckpt_every_steps = 2000
  return config_lib.finish_recipe(c, a, eval_batch_size=100)
