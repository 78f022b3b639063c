"""The `cifar10` recipe, for `--config=configs/cifar10.py[:arg]` in a checkout.

The recipe and its arguments live in mexd/configs/cifar10.py, installed with the
package (`--config=cifar10[:arg]` works from any directory).
"""

from mexd.configs.cifar10 import get_config  # pylint: disable=unused-import
