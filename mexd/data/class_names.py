"""Class names of the data sets mexd loads (what an export's answers name).

Data sets without a list here are named by their class index ("0", "1",
...); `python -m mexd.export --class_names=...` overrides either.
"""

from typing import List

_NAMES = {
    "digits": [str(i) for i in range(10)],
    "mnist": [str(i) for i in range(10)],
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog",
                "frog", "horse", "ship", "truck"],
}


def class_names(data_name: str, num_classes: int) -> List[str]:
  """The names of `data_name`'s classes, or "0".."C-1" if unknown (or if
  the known list has another length, e.g. a subset of the classes)."""
  names = _NAMES.get(data_name)
  if names is None or len(names) != num_classes:
    return [str(i) for i in range(num_classes)]
  return list(names)
