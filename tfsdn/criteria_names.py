"""Moved to `tfsdn.common.scores`; this old name is an alias of it.

Deprecated: import `tfsdn.common.scores` instead.
"""

import sys
import warnings

from tfsdn.common import scores as _moved

warnings.warn("tfsdn.criteria_names moved to tfsdn.common.scores; import it from there "
              "(the old name will go).", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
