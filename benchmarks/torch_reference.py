"""PyTorch twins of mexd's networks and of their train step.

Two networks: the CIFAR multi-exit ResNet-18 (`MultiExitResNet18`) and the
Fashion-MNIST recipe's multi-exit CNN and its student (`MultiExitSmallCNN`,
the twin of `mexd.models.small_cnn.SmallCNN`; `load_small_cnn` copies a
mexd model's variables into it, which the parity test uses).

ResNet-18:

Same architecture as `mexd.models.get_model("resnet18", head="byot")` (and
its width-scaled variants, widths (w, 2w, 4w, 8w), stem w):
* stem: conv3x3 s1 (no bias) -> BN -> ReLU;
* four stages of two BasicBlocks (conv3x3(s)-BN-ReLU-conv3x3-BN + shortcut,
  1x1 conv(s)-BN projection when the shape changes, ReLU), stride 2 at the
  first block of stages 2-4;
* exit heads after stages 1-3 (BYOT/EED): one (ReLU -> conv3x3 s2 -> BN) step
  per halving of the resolution, widths of the later stages, ending at the
  final width; then ReLU -> global average pool -> Linear(C);
* final exit: global average pool -> Linear(C).
BatchNorm eps 1e-5 and momentum 0.1 (= flax momentum 0.9).

SmallCNN (head "conv", downsample "maxpool" or "stride"): each stage
[2 x 2 max pool (ceil) when its stride is 2 and downsample is "maxpool"] ->
2 x (conv3x3 without bias -> BN -> ReLU), the first conv strided (with
flax's asymmetric "SAME" padding) when downsample is "stride"; after every stage an exit ReLU -> conv3x3 s2 (D
channels) -> BN -> ReLU -> global average pool -> Linear(C).

The train step (`TrainStep`, either network) mirrors `mexd.steps.make_train_step` with method "pl" (Phuong
& Lampert) or "eed": on-device normalisation, pad-4 random crop and flip,
the loss, SGD with Nesterov momentum and coupled weight decay on the conv /
dense kernels only, and the adaptive P&L temperature as a tensor (no host
sync). It skips mexd's extras (per-exit accuracy, gradient norm, non-finite
step guard), so it does slightly less work than the JAX step.

Only the benchmarks import this file; torch is the optional `bench` extra.
"""

from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F


def _conv(cin: int, cout: int, k: int, stride: int) -> nn.Conv2d:
  return nn.Conv2d(cin, cout, k, stride, padding=k // 2, bias=False)


class BasicBlock(nn.Module):
  """conv3x3(s) -> BN -> ReLU -> conv3x3 -> BN, + shortcut, -> ReLU."""

  def __init__(self, cin: int, cout: int, stride: int):
    super().__init__()
    self.conv1, self.bn1 = _conv(cin, cout, 3, stride), nn.BatchNorm2d(cout)
    self.conv2, self.bn2 = _conv(cout, cout, 3, 1), nn.BatchNorm2d(cout)
    self.proj = None
    if stride != 1 or cin != cout:
      self.proj = nn.Sequential(_conv(cin, cout, 1, stride),
                                nn.BatchNorm2d(cout))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return F.relu((x if self.proj is None else self.proj(x)) + y)


class ByotHead(nn.Module):
  """(ReLU -> conv3x3 s2 -> BN) steps -> ReLU -> mean pool -> Linear."""

  def __init__(self, cin: int, steps: Sequence[int], num_classes: int):
    super().__init__()
    layers = []
    for w in steps:
      layers += [nn.ReLU(), _conv(cin, w, 3, 2), nn.BatchNorm2d(w)]
      cin = w
    self.steps = nn.Sequential(*layers)
    self.out = nn.Linear(cin, num_classes)

  def forward(self, h):
    f = F.relu(self.steps(h)).mean(dim=(2, 3))
    return self.out(f), f


class FinalHead(nn.Module):
  """Global average pool -> Linear (feature = the pooled vector)."""

  def __init__(self, cin: int, num_classes: int):
    super().__init__()
    self.out = nn.Linear(cin, num_classes)

  def forward(self, h):
    f = h.mean(dim=(2, 3))
    return self.out(f), f


def _exits(h, stages, heads):
  """Runs stage k then exit head k for every k: (logits [E, B, C],
  features [E, B, D])."""
  logits, feats = [], []
  for stage, head in zip(stages, heads):
    h = stage(h)
    z, f = head(h)
    logits.append(z)
    feats.append(f)
  return torch.stack(logits), torch.stack(feats)


class MultiExitResNet18(nn.Module):
  """Returns (logits [E, B, C], features [E, B, D]) like the mexd model."""

  def __init__(self, num_classes: int = 100, width: int = 64,
               stage_sizes: Sequence[int] = (2, 2, 2, 2)):
    super().__init__()
    widths = [width * m for m in (1, 2, 4, 8)]
    self.stem = nn.Sequential(_conv(3, width, 3, 1), nn.BatchNorm2d(width),
                              nn.ReLU())
    stages, cin = [], width
    for i, (n, w) in enumerate(zip(stage_sizes, widths)):
      blocks = []
      for j in range(n):
        blocks.append(BasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1))
        cin = w
      stages.append(nn.Sequential(*blocks))
    self.stages = nn.ModuleList(stages)
    heads = [ByotHead(widths[i], widths[i + 1:], num_classes)
             for i in range(len(widths) - 1)]
    heads.append(FinalHead(widths[-1], num_classes))
    self.heads = nn.ModuleList(heads)
    for m in self.modules():  # He-normal fan_out, as mexd's conv_init.
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

  def forward(self, x):
    return _exits(self.stem(x), self.stages, self.heads)


class SameConv(nn.Conv2d):
  """A bias-free k x k conv with flax's "SAME" padding (asymmetric for a
  stride: total max((ceil(H / s) - 1) s + k - H, 0), the extra one after)."""

  def __init__(self, cin: int, cout: int, k: int, stride: int):
    super().__init__(cin, cout, k, stride, padding=0, bias=False)

  def forward(self, x):
    pads = []
    for size in (x.shape[3], x.shape[2]):  # F.pad order: W then H
      s, k = self.stride[0], self.kernel_size[0]
      total = max((-(-size // s) - 1) * s + k - size, 0)
      pads += [total // 2, total - total // 2]
    return super().forward(F.pad(x, pads))


class SmallStage(nn.Module):
  """[max pool 2 x 2, ceil] -> n x (conv3x3 no bias -> BN -> ReLU)."""

  def __init__(self, cin: int, width: int, stride: int, maxpool: bool,
               num_convs: int = 2):
    super().__init__()
    self.pool = stride if maxpool and stride > 1 else 0
    layers = []
    for i in range(num_convs):
      s = stride if i == 0 and not maxpool else 1
      conv = SameConv(cin, width, 3, s) if s > 1 else _conv(cin, width, 3, 1)
      layers += [conv, nn.BatchNorm2d(width), nn.ReLU()]
      cin = width
    self.convs = nn.Sequential(*layers)

  def forward(self, x):
    if self.pool:  # flax "SAME" max pool = ceil mode (pads with -inf).
      x = F.max_pool2d(x, self.pool, self.pool, ceil_mode=True)
    return self.convs(x)


class MultiExitSmallCNN(nn.Module):
  """Twin of `mexd.models.small_cnn.SmallCNN` with head="conv".

  Returns (logits [E, B, C], features [E, B, D]) like the mexd model.
  """

  def __init__(self, num_classes: int = 10,
               widths: Sequence[int] = (16, 32, 64, 128),
               strides: Sequence[int] = (1, 2, 2, 2), head_features: int = 64,
               in_channels: int = 1, downsample: str = "maxpool"):
    super().__init__()
    if downsample not in ("maxpool", "stride"):
      raise ValueError(f"downsample {downsample!r}: maxpool or stride")
    stages, cin = [], in_channels
    for w, s in zip(widths, strides):
      stages.append(SmallStage(cin, w, s, downsample == "maxpool"))
      cin = w
    self.stages = nn.ModuleList(stages)
    self.heads = nn.ModuleList(
        ByotHead(w, [head_features], num_classes) for w in widths)

  def forward(self, x):
    return _exits(x, self.stages, self.heads)


def twin(model, net: str, num_classes: int, width: int = 64,
         stages: Sequence[int] = (2, 2, 2, 2), in_channels: int = 1):
  """The PyTorch twin of a benchmark network (`benchmarks.fixtures.NETS`).

  net "resnet18": `MultiExitResNet18` at base `width` with `stages`;
  otherwise `model` is a mexd SmallCNN and its `MultiExitSmallCNN` twin is
  built from its widths, strides, head width and down-sampling.
  """
  if net == "resnet18":
    return MultiExitResNet18(num_classes, width, stages)
  return MultiExitSmallCNN(num_classes, model.widths, model.strides,
                           model.head_features, in_channels=in_channels,
                           downsample=model.downsample)


def staged_predict(model: nn.Module, x: torch.Tensor, thresholds):
  """Early exit in PyTorch eager, as a PyTorch user writes it.

  Stage k (and its exit head) runs on the images still in; an image leaves
  at the first exit whose max softmax probability is >= thresholds[k] (the
  last exit takes the rest). One host sync per stage (the boolean index).
  `model`: a twin with `stages` and `heads` (and optionally `stem`), in
  eval mode; call under `torch.inference_mode()`.

  Returns:
    (labels [N], exits [N]) as int64 NumPy arrays.
  """
  n = x.shape[0]
  labels = torch.zeros(n, dtype=torch.int64)
  exits = torch.zeros(n, dtype=torch.int64)
  rows = torch.arange(n)
  h = model.stem(x) if hasattr(model, "stem") else x
  last = len(model.heads) - 1
  for k, (stage, head) in enumerate(zip(model.stages, model.heads)):
    h = stage(h)
    z, _ = head(h)
    prob, label = F.softmax(z, -1).max(-1)
    done = prob >= float(thresholds[k]) if k < last else torch.ones_like(
        prob, dtype=torch.bool)
    labels[rows[done]] = label[done]
    exits[rows[done]] = k
    keep = ~done
    if not bool(keep.any()):
      break
    h, rows = h[keep], rows[keep]
  return labels.numpy(), exits.numpy()


def _copy(dst: torch.Tensor, value) -> None:
  value = torch.tensor(np.array(value, np.float32))
  if tuple(dst.shape) != tuple(value.shape):
    raise ValueError(f"shape {tuple(value.shape)} into {tuple(dst.shape)}")
  with torch.no_grad():
    dst.copy_(value)


def _load_bn(bn: nn.BatchNorm2d, params, stats) -> None:
  _copy(bn.weight, params["scale"])
  _copy(bn.bias, params["bias"])
  _copy(bn.running_mean, stats["mean"])
  _copy(bn.running_var, stats["var"])


def load_small_cnn(model: MultiExitSmallCNN, variables) -> MultiExitSmallCNN:
  """Copies a mexd SmallCNN's {"params", "batch_stats"} into `model`.

  Conv kernels HWIO -> OIHW, Dense kernels [in, out] -> Linear [out, in].
  """
  p, st = variables["params"], variables["batch_stats"]
  for i, stage in enumerate(model.stages):
    convs = [m for m in stage.convs if isinstance(m, nn.Conv2d)]
    bns = [m for m in stage.convs if isinstance(m, nn.BatchNorm2d)]
    for j, (conv, bn) in enumerate(zip(convs, bns)):
      _copy(conv.weight, np.transpose(p[f"blocks_{i}"][f"conv{j}"]["kernel"],
                                      (3, 2, 0, 1)))
      _load_bn(bn, p[f"blocks_{i}"][f"bn{j}"], st[f"blocks_{i}"][f"bn{j}"])
  for i, head in enumerate(model.heads):
    conv, bn = head.steps[1], head.steps[2]
    hp, hs = p[f"heads_{i}"], st[f"heads_{i}"]
    _copy(conv.weight, np.transpose(hp["conv0"]["kernel"], (3, 2, 0, 1)))
    _load_bn(bn, hp["bn0"], hs["bn0"])
    _copy(head.out.weight, np.transpose(hp["out"]["kernel"]))
    _copy(head.out.bias, hp["out"]["bias"])
  return model


def kl_per_example(t_logits, s_logits, temperature):
  """KL(softmax(t / T) || softmax(s / T)) over the last axis."""
  log_q = F.log_softmax(t_logits / temperature, dim=-1)
  log_p = F.log_softmax(s_logits / temperature, dim=-1)
  return (log_q.exp() * (log_q - log_p)).sum(-1)


def pl_loss(logits, labels, temperature, c: float = 0.5):
  """Phuong & Lampert: (1-C) sum_i CE + C T^2 sum_{i<E-1} KL(sg(t) || p_i).

  Returns (loss, teacher mean max-probability at T, detached).
  """
  e = logits.shape[0]
  teacher = logits[-1].detach()
  ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                       labels.repeat(e), reduction="none").view(e, -1)
  kd = kl_per_example(teacher[None], logits[:-1], temperature).mean(-1)
  loss = (1 - c) * ce.mean(-1).sum() + c * temperature**2 * kd.sum()
  max_prob = F.softmax(teacher / temperature, -1).max(-1).values.mean()
  return loss, max_prob


def eed_loss(logits, features, labels):
  """EED: sum_i CE + MSE to the detached exit-ensemble logits + partial L2."""
  e = logits.shape[0]
  ens = logits.detach().mean(0)
  f_ens = features.detach().mean(0)
  ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                       labels.repeat(e), reduction="none").view(e, -1)
  mse = ((logits - ens[None]) ** 2).mean(dim=(1, 2))
  mask = (features > 0) | (f_ens[None] > 0)
  feat = torch.where(mask, (features - f_ens[None]) ** 2,
                     torch.zeros_like(features)).mean(dim=(1, 2))
  return ce.mean(-1).sum() + mse.sum() + feat.sum()


def preprocess(images_u8, mean, std, pad: int = 4, flip: bool = True,
               generator=None, channels_last: bool = False):
  """uint8 [B, H, W, C] -> normalised, pad-crop-flipped float [B, C, H, W]."""
  x = images_u8.float().div_(255.0)
  x = (x - mean) / std                                       # [B, H, W, C]
  b, h, w, _ = x.shape
  if pad:
    xp = F.pad(x, (0, 0, pad, pad, pad, pad))
    dev = x.device
    off = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator,
                        device=dev)
    rows = (off[:, 0, None] + torch.arange(h, device=dev))[:, :, None]
    cols = (off[:, 1, None] + torch.arange(w, device=dev))[:, None, :]
    x = xp[torch.arange(b, device=dev)[:, None, None], rows, cols]
  if flip:
    do = torch.rand(b, generator=generator, device=x.device) < 0.5
    x = torch.where(do[:, None, None, None], x.flip(2), x)
  x = x.permute(0, 3, 1, 2)
  return x.contiguous(memory_format=torch.channels_last if channels_last
                      else torch.contiguous_format)


def make_optimizer(model: nn.Module, lr: float = 0.1, momentum: float = 0.9,
                   weight_decay: float = 5e-4, nesterov: bool = True):
  """SGD(+Nesterov) with coupled weight decay on kernels (ndim >= 2) only."""
  decay = [p for p in model.parameters() if p.ndim >= 2]
  rest = [p for p in model.parameters() if p.ndim < 2]
  return torch.optim.SGD(
      [{"params": decay, "weight_decay": weight_decay},
       {"params": rest, "weight_decay": 0.0}],
      lr=lr, momentum=momentum, nesterov=nesterov)


class TrainStep:
  """One PyTorch train step of a multi-exit network ("pl" or "eed").

  `model` None builds the ResNet-18 (`num_classes`, `width`,
  `stage_sizes`); otherwise the given network (e.g. `MultiExitSmallCNN`) is
  trained. `pad` is the random crop's padding (the Fashion-MNIST recipe's
  is 2). `device` ("cpu", "cuda"): where the model, the optimizer state and
  the augmentation run; the caller puts the batch there. `compile` wraps the
  network in `torch.compile` (inductor; its first steps compile).
  """

  def __init__(self, *, num_classes: int = 100, width: int = 64,
               method: str = "pl", mean: Tuple[float, ...] = (0.5, 0.5, 0.5),
               std: Tuple[float, ...] = (0.25, 0.25, 0.25),
               channels_last: bool = False, seed: int = 0,
               stage_sizes: Sequence[int] = (2, 2, 2, 2),
               device: str = "cpu", model: Optional[nn.Module] = None,
               pad: int = 4, compile: bool = False):  # pylint: disable=redefined-builtin
    if method not in ("pl", "eed"):
      raise ValueError(f"torch reference has methods pl, eed; got {method!r}")
    torch.manual_seed(seed)
    self.device = torch.device(device)
    if model is None:
      model = MultiExitResNet18(num_classes, width, stage_sizes)
    self.model = model.train().to(self.device)
    self.channels_last = channels_last
    if channels_last:
      self.model = self.model.to(memory_format=torch.channels_last)
    self.opt = make_optimizer(self.model)
    self.net = torch.compile(self.model) if compile else self.model
    self.method = method
    self.pad = pad
    self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device)
    self.std = torch.tensor(std, dtype=torch.float32, device=self.device)
    self.temperature = torch.tensor(1.0, device=self.device)
    self.gen = torch.Generator(device=self.device).manual_seed(seed)

  def __call__(self, images_u8: torch.Tensor, labels: torch.Tensor):
    """images_u8: uint8 [B, H, W, C]; labels: int64 [B], on `device`.

    Returns the loss, a 0-d tensor on `device` (not synchronised).
    """
    x = preprocess(images_u8, self.mean, self.std, pad=self.pad,
                   generator=self.gen, channels_last=self.channels_last)
    logits, feats = self.net(x)
    if self.method == "pl":
      loss, max_prob = pl_loss(logits, labels, self.temperature)
    else:
      loss = eed_loss(logits, feats, labels)
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    self.opt.step()
    if self.method == "pl":  # T <- 1.05 T if max-prob > 0.5, on-tensor.
      self.temperature = torch.where(max_prob > 0.5, self.temperature * 1.05,
                                     self.temperature)
    return loss.detach()
