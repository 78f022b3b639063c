"""The `digits` recipe, for `--config=configs/digits.py[:arg]` in a checkout.

The recipe and its arguments live in mexd/configs/digits.py, installed with the
package (`--config=digits[:arg]` works from any directory).
"""

from mexd.configs.digits import get_config  # pylint: disable=unused-import
