"""The `cub200` recipe, for `--config=configs/cub200.py[:arg]` in a checkout.

The recipe and its arguments live in mexd/configs/cub200.py, installed with the
package (`--config=cub200[:arg]` works from any directory).
"""

from mexd.configs.cub200 import get_config  # pylint: disable=unused-import
