"""Moved to `tfsdn.common.report`; this old name is an alias of it.

Deprecated: import `tfsdn.common.report` instead.
"""

import sys
import warnings

from tfsdn.common import report as _moved

warnings.warn("tfsdn.reporting moved to tfsdn.common.report; import it from there "
              "(the old name will go).", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
