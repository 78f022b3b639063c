"""Fine-grained recipes: Caltech-UCSD Birds-200-2011 (tfds caltech_birds2011).

MATE's fine-grained setting (Sun et al. 2024 evaluate on three fine-grained
sets; the paper gives no training details, so this recipe is ours):

  python -m mexd.train --config=cub200              # MATE
  python -m mexd.train --config=cub200:method=eed
  python -m mexd.train --config=cub200:runlocal=True

Data: `tfds build caltech_birds2011 --file_format=array_record
--data_dir=DIR` then `--config.data.data_dir=DIR` (docs/data.md). Images are
resized (shorter side) and center-cropped to `image_size` (default 224) once
when loaded; training adds a pad-16 random crop and flips.

Recipe: ImageNet-stem ResNet-18 trained from scratch (no pretrained weights
in mexd), an exit after each of the four stages with depthwise-separable
BYOT heads (full 3x3 heads at 56x56 would cost more than the backbone), SGD
0.05 Nesterov, wd 5e-4, batch 64, 5 warm-up epochs then cosine over 200
epochs, 500 validation images carved from train for calibration.

Args (comma separated after ':'): method (default mate), student (the
width-halved student for erde/kd, from a teacher run given by
--config.teacher_workdir), image_size, epochs (0: 200), runlocal (1 epoch,
batch 8, 64 px).
"""

from mexd import config_lib

DATA = "tfds:caltech_birds2011"
VAL_SIZE = 500


def get_config(arg=None):
  a = config_lib.parse_arg(arg, **config_lib.recipe_args(
      method="mate", image_size=224))
  c = config_lib.base_config()
  c.data.name = DATA
  c.data.image_size = a.image_size
  c.data.val_size = VAL_SIZE
  c.augment.crop_pad = a.image_size // 14
  c.augment.flip = True
  c.method = a.method
  c.model.name = "resnet18_imagenet"
  c.model.kwargs.head = "byot_sep"
  if a.student:
    c.model.kwargs.widths = (32, 64, 128, 256)
    c.model.kwargs.stem_width = 32
  c.batch_size = 64
  c.eval_batch_size = 128
  c.num_epochs = 200
  c.optimizer.update(dict(name="sgd", lr=0.05, momentum=0.9, nesterov=True,
                          weight_decay=5e-4, schedule="cosine",
                          warmup_epochs=5.0))
  c.log_every_steps = 50
  c.eval_every_epochs = 10
  c.ckpt_every_steps = 1000
  if a.runlocal:
    c.data.image_size = 64
    c.augment.crop_pad = 4
  return config_lib.finish_recipe(c, a, batch_size=8, eval_batch_size=32)
