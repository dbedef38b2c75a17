"""Moved to `tfsdn.common.stages`; this old name is an alias of it.

Deprecated: import `tfsdn.common.stages` instead.
"""

import sys
import warnings

from tfsdn.common import stages as _moved

warnings.warn("tfsdn.training_plan moved to tfsdn.common.stages; import it from there "
              "(the old name will go).", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
