"""Moved to `tfsdn.common.liveness`; this old name is an alias of it.

Deprecated: import `tfsdn.common.liveness` instead.
"""

import sys
import warnings

from tfsdn.common import liveness as _moved

warnings.warn("tfsdn.liveness moved to tfsdn.common.liveness; import it from there "
              "(the old name will go).", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
