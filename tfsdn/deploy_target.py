"""Moved to `tfsdn.common.deploy_target`; this old name is an alias of it.

Deprecated: import `tfsdn.common.deploy_target` instead.
"""

import sys
import warnings

from tfsdn.common import deploy_target as _moved

warnings.warn("tfsdn.deploy_target moved to tfsdn.common.deploy_target; import it from there "
              "(the old name will go).", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
