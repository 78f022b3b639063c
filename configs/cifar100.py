"""The `cifar100` recipe, for `--config=configs/cifar100.py[:arg]` in a checkout.

The recipe and its arguments live in mexd/configs/cifar100.py, installed with the
package (`--config=cifar100[:arg]` works from any directory).
"""

from mexd.configs.cifar100 import get_config  # pylint: disable=unused-import
