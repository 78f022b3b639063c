"""Tests of per-exit costs and of parameter counts against hand counts.

Parameter counts come from `jax.eval_shape(model.init)` (no compile) and are
checked twice: exactly against an independent hand count of conv / BN / fc
parameters, and within 1% against the published counts.
"""

import jax
import jax.numpy as jnp
import pytest

from mexd import models
from mexd.models import costs


def conv(k, cin, cout, groups=1):
  return k * k * cin * cout // groups


def bn(c):
  return 2 * c  # scale and bias (running stats are not parameters)


def fc(cin, cout):
  return cin * cout + cout


def resnet_basic(sizes, widths, num_classes, imagenet=False, stem=64):
  n = conv(7 if imagenet else 3, 3, stem) + bn(stem)
  cin = stem
  for i, (s, w) in enumerate(zip(sizes, widths)):
    for j in range(s):
      n += conv(3, cin, w) + bn(w) + conv(3, w, w) + bn(w)
      if (i > 0 and j == 0) or cin != w:
        n += conv(1, cin, w) + bn(w)
      cin = w
  return n + fc(cin, num_classes)


def resnet_bottleneck(sizes, widths, mids, num_classes, imagenet=False,
                      groups=1, stem=64):
  n = conv(7 if imagenet else 3, 3, stem) + bn(stem)
  cin = stem
  for i, (s, w, m) in enumerate(zip(sizes, widths, mids)):
    for j in range(s):
      n += conv(1, cin, m) + bn(m) + conv(3, m, m, groups) + bn(m)
      n += conv(1, m, w) + bn(w)
      if (i > 0 and j == 0) or cin != w:
        n += conv(1, cin, w) + bn(w)
      cin = w
  return n + fc(cin, num_classes)


def wrn(depth, k, num_classes):
  n, cin = conv(3, 3, 16), 16
  for w in (16 * k, 32 * k, 64 * k):
    for _ in range((depth - 4) // 6):
      n += bn(cin) + conv(3, cin, w) + bn(w) + conv(3, w, w)
      if cin != w:
        n += conv(1, cin, w)
      cin = w
  return n + bn(cin) + fc(cin, num_classes)


def vgg(blocks, num_classes, hidden=()):
  n, cin = 0, 3
  for block in blocks:
    for w in block:
      n += conv(3, cin, w) + bn(w)
      cin = w
  for h in hidden:
    n += fc(cin, h)
    cin = h
  return n + fc(cin, num_classes)


VGG16 = ((64, 64), (128, 128), (256,) * 3, (512,) * 3, (512,) * 3)
R50 = dict(widths=(256, 512, 1024, 2048), mids=(64, 128, 256, 512))
RX29 = dict(widths=(256, 512, 1024), mids=(512, 1024, 2048), groups=8)

# (name, model kwargs, num_classes, hand count, published count or None).
CASES = [
    ("resnet18", {}, 100, resnet_basic((2,) * 4, (64, 128, 256, 512), 100),
     11.22e6),
    ("resnet34", {}, 100, resnet_basic((3, 4, 6, 3), (64, 128, 256, 512),
                                       100), 21.33e6),
    ("resnet50", {}, 100, resnet_bottleneck((3, 4, 6, 3), num_classes=100,
                                            **R50), 23.71e6),
    ("resnet18_imagenet", {}, 1000, resnet_basic(
        (2,) * 4, (64, 128, 256, 512), 1000, imagenet=True), 11.69e6),
    ("resnet50_imagenet", {}, 1000, resnet_bottleneck(
        (3, 4, 6, 3), num_classes=1000, imagenet=True, **R50), 25.56e6),
    ("wrn28_10", {}, 10, wrn(28, 10, 10), 36.5e6),
    ("wrn16_8", {}, 10, wrn(16, 8, 10), 11.0e6),
    ("resnext29_8x64d", {}, 10, resnet_bottleneck((3, 3, 3), num_classes=10,
                                                  **RX29), 34.4e6),
    # VGG-16-BN with a 512-512-C classifier: the usual ~15.0M CIFAR count.
    ("vgg16", dict(classifier_hidden=(512,)), 100,
     vgg(VGG16, 100, (512,)), 15.0e6),
    ("vgg16", {}, 100, vgg(VGG16, 100), None),
    ("resnet18_half", {}, 100, resnet_basic((2,) * 4, (32, 64, 128, 256), 100,
                                            stem=32), None),
    ("resnet10", {}, 100, resnet_basic((1,) * 4, (64, 128, 256, 512), 100),
     None),
]


def _variables(name, num_classes, hw=None, **kw):
  model = models.get_model(name, num_classes=num_classes, **kw)
  hw = hw or min(models.input_size(name), 64)
  x = jax.ShapeDtypeStruct((1, hw, hw, 3), jnp.float32)
  return model, jax.eval_shape(model.init, jax.random.key(0), x)


@pytest.mark.parametrize("name,kw,num_classes,hand,published", CASES)
def test_backbone_params_match_hand_and_published_counts(
    name, kw, num_classes, hand, published):
  _, variables = _variables(name, num_classes, **kw)
  counts = costs.param_counts(variables)
  assert counts["backbone"] == hand
  if published:
    assert abs(counts["backbone"] - published) <= 0.01 * published
  assert counts["backbone"] + counts["heads"] == counts["total"]
  assert counts["blocks"] + counts["final_head"] == counts["backbone"]


def test_eed_byot_heads_of_resnet18():
  # EED's exit branches: 3 / 2 / 1 x (conv3x3 + BN) then fc 512 -> 100.
  _, variables = _variables("resnet18", 100)
  chain = [conv(3, 64, 128) + bn(128), conv(3, 128, 256) + bn(256),
           conv(3, 256, 512) + bn(512)]
  hand = sum(chain) + sum(chain[1:]) + chain[2] + 3 * fc(512, 100)
  assert costs.param_counts(variables)["heads"] == hand


def test_flops_reads_dict_or_list():

  class Fake:

    def __init__(self, ca):
      self.ca = ca

    def cost_analysis(self):
      return self.ca

  assert costs._flops(Fake({"flops": 4.0})) == 4.0
  assert costs._flops(Fake([{"flops": 6.0, "bytes accessed": 1.0}])) == 6.0
  with pytest.raises(RuntimeError, match="flops"):
    costs._flops(Fake([]))


def test_exit_costs_increase_with_depth_resnet18():
  model, variables = _variables("resnet18", 100)
  out = costs.exit_costs(model, variables, (32, 32, 3))
  macs = [c["macs"] for c in out]
  assert [c["exit"] for c in out] == [0, 1, 2, 3]
  assert all(a < b for a, b in zip(macs, macs[1:]))
  assert all(c["macs"] == c["flops"] / 2 for c in out)
  # XLA skips the multiply-adds on zero padding, so the final exit costs a
  # bit less than the usual 0.557 GMACs of CIFAR ResNet-18 (convs + fc).
  assert 0.40e9 < macs[-1] < 0.56e9


def test_exit_costs_increase_with_depth_resnet50_default_heads():
  # Bottleneck nets default to separable BYOT heads; with plain 3x3 heads
  # exit 2 would cost more than the final exit.
  model, variables = _variables("resnet50", 100)
  assert model.head == "byot_sep"
  macs = [c["macs"] for c in costs.exit_costs(model, variables, (32, 32, 3))]
  assert all(a < b for a, b in zip(macs, macs[1:]))


def test_exit_costs_increase_with_depth_msdnet():
  # A short MSDNet (3 exits, 5 layers, 2 transitions, pruned last layers).
  model, variables = _variables("msdnet_cifar", 100, n_exits=3,
                                nlayers_to_exit=2, nlayers_between_exits=1)
  with pytest.raises(ValueError, match="input_shape"):
    costs.exit_costs(model, variables, (2, 32, 32, 3))
  macs = [c["macs"] for c in costs.exit_costs(model, variables, (32, 32, 3))]
  assert len(macs) == 3
  assert all(a < b for a, b in zip(macs, macs[1:]))
