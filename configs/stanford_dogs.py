"""The `stanford_dogs` recipe, for `--config=configs/stanford_dogs.py[:arg]` in a checkout.

The recipe and its arguments live in mexd/configs/stanford_dogs.py, installed with the
package (`--config=stanford_dogs[:arg]` works from any directory).
"""

from mexd.configs.stanford_dogs import get_config  # pylint: disable=unused-import
