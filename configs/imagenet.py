"""The `imagenet` recipe, for `--config=configs/imagenet.py[:arg]` in a checkout.

The recipe and its arguments live in mexd/configs/imagenet.py, installed with the
package (`--config=imagenet[:arg]` works from any directory).
"""

from mexd.configs.imagenet import get_config  # pylint: disable=unused-import
