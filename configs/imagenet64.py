"""The `imagenet64` recipe, for `--config=configs/imagenet64.py[:arg]` in a checkout.

The recipe and its arguments live in mexd/configs/imagenet64.py, installed with the
package (`--config=imagenet64[:arg]` works from any directory).
"""

from mexd.configs.imagenet64 import get_config  # pylint: disable=unused-import
