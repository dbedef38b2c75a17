"""Moved to `tfsdn.common.channel_order`; this old name is an alias of it.

Deprecated: import `tfsdn.common.channel_order` instead.
"""

import sys
import warnings

from tfsdn.common import channel_order as _moved

warnings.warn("tfsdn.channel_order moved to tfsdn.common.channel_order; import it from there "
              "(the old name will go).", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
