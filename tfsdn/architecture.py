"""Moved to `tfsdn.common.architecture`; this old name is an alias of it.

Deprecated: import `tfsdn.common.architecture` instead.
"""

import sys
import warnings

from tfsdn.common import architecture as _moved

warnings.warn("tfsdn.architecture moved to tfsdn.common.architecture; import it from there "
              "(the old name will go).", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
