"""The `fashion_mnist` recipe, for `--config=configs/fashion_mnist.py[:arg]` in a checkout.

The recipe and its arguments live in mexd/configs/fashion_mnist.py, installed with the
package (`--config=fashion_mnist[:arg]` works from any directory).
"""

from mexd.configs.fashion_mnist import get_config  # pylint: disable=unused-import
