"""PyTorch twin of mexd's CIFAR multi-exit ResNet-18 and its train step.

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

The train step mirrors `mexd.steps.make_train_step` with method "pl" (Phuong
& Lampert) or "eed": on-device normalisation, pad-4 random crop and flip,
the loss, SGD with Nesterov momentum and coupled weight decay on the conv /
dense kernels only, and the adaptive P&L temperature as a tensor (no host
sync). It skips mexd's extras (per-exit accuracy, gradient norm, non-finite
step guard), so it does slightly less work than the JAX step.

Only the benchmarks import this file; torch is the optional `bench` extra.
"""

from typing import Sequence, Tuple

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
    h = self.stem(x)
    logits, feats = [], []
    for stage, head in zip(self.stages, self.heads):
      h = stage(h)
      z, f = head(h)
      logits.append(z)
      feats.append(f)
    return torch.stack(logits), torch.stack(feats)


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
  """One PyTorch train step of the multi-exit ResNet-18 ("pl" or "eed").

  `device` ("cpu", "cuda"): where the model, the optimizer state and the
  augmentation run; the caller puts the batch there.
  """

  def __init__(self, *, num_classes: int = 100, width: int = 64,
               method: str = "pl", mean: Tuple[float, ...] = (0.5, 0.5, 0.5),
               std: Tuple[float, ...] = (0.25, 0.25, 0.25),
               channels_last: bool = False, seed: int = 0,
               stage_sizes: Sequence[int] = (2, 2, 2, 2),
               device: str = "cpu"):
    if method not in ("pl", "eed"):
      raise ValueError(f"torch reference has methods pl, eed; got {method!r}")
    torch.manual_seed(seed)
    self.device = torch.device(device)
    self.model = MultiExitResNet18(num_classes, width, stage_sizes).train()
    self.model = self.model.to(self.device)
    self.channels_last = channels_last
    if channels_last:
      self.model = self.model.to(memory_format=torch.channels_last)
    self.opt = make_optimizer(self.model)
    self.method = method
    self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device)
    self.std = torch.tensor(std, dtype=torch.float32, device=self.device)
    self.temperature = torch.tensor(1.0, device=self.device)
    self.gen = torch.Generator(device=self.device).manual_seed(seed)

  def __call__(self, images_u8: torch.Tensor, labels: torch.Tensor):
    """images_u8: uint8 [B, H, W, 3]; labels: int64 [B], on `device`.

    Returns the loss, a 0-d tensor on `device` (not synchronised).
    """
    x = preprocess(images_u8, self.mean, self.std, generator=self.gen,
                   channels_last=self.channels_last)
    logits, feats = self.model(x)
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
