"""Moved to `tfsdn.common.checks`; this old name is an alias of it.

Deprecated: import `tfsdn.common.checks` instead.
"""

import sys
import warnings

from tfsdn.common import checks as _moved

warnings.warn("tfsdn.checks moved to tfsdn.common.checks; import it from there "
              "(the old name will go).", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
