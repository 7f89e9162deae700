"""Reading and writing TorchRec's ShardedTensor tables without torch's deprecation noise.

TorchRec 1.8's DMP state dicts still hold ``ShardedTensor`` values; every torch function on one
warns "Please use DTensor instead and we are deprecating ShardedTensor." (a FutureWarning
attributed to the caller's line). Code that must read or write such tables does it inside
``sharded_tensor_access()``, which ignores exactly that warning and nothing else.

>>> import warnings
>>> with sharded_tensor_access():
...     warnings.warn(DEPRECATION, FutureWarning)  # dropped
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator

DEPRECATION = "Please use DTensor instead and we are deprecating ShardedTensor."


@contextlib.contextmanager
def sharded_tensor_access() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=re.escape(DEPRECATION), category=FutureWarning)
        yield
