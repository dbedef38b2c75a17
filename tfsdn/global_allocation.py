"""Moved to `tfsdn.common.allocation`; this old name is an alias of it.

Deprecated: import `tfsdn.common.allocation` instead.
"""

import sys
import warnings

from tfsdn.common import allocation as _moved

warnings.warn("tfsdn.global_allocation moved to tfsdn.common.allocation; import it from there "
              "(the old name will go).", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
