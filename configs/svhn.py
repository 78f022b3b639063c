"""The `svhn` recipe, for `--config=configs/svhn.py[:arg]` in a checkout.

The recipe and its arguments live in mexd/configs/svhn.py, installed with the
package (`--config=svhn[:arg]` works from any directory).
"""

from mexd.configs.svhn import get_config  # pylint: disable=unused-import
