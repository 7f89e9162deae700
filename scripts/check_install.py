"""Fail the install if the pinned CPU stack is not what got installed."""

import importlib.metadata as md
import sys

import torch

problems = []
if not torch.__version__.startswith("2.13.0"):
    problems.append(f"torch {torch.__version__} installed, 2.13.0 expected")
if torch.version.cuda is not None:
    problems.append(f"torch is a CUDA build ({torch.version.cuda}); the CPU wheel is expected")
try:
    md.version("fbgemm-gpu")
    problems.append("the CUDA package 'fbgemm-gpu' is installed; only 'fbgemm-gpu-cpu' may be")
except md.PackageNotFoundError:
    pass
try:
    import fbgemm_gpu  # noqa: F401
    import torchrec  # noqa: F401
except Exception as exc:  # the libtorch_cuda.so trap shows up here
    problems.append(f"import torchrec/fbgemm_gpu failed: {exc}")
try:
    from recsys.serving import idpath  # noqa: F401  (the compiled id path, serving/idpath.c, built by pip install)
except ImportError as exc:
    problems.append(f"the compiled id path recsys.serving.idpath is not built ({exc}); reinstall with gcc and the Python headers present")
try:
    from recsys.serving import httpfast  # noqa: F401  (the lean front's request recogniser, serving/httpfast.c)
except ImportError as exc:
    problems.append(f"the compiled extension recsys.serving.httpfast is not built ({exc}); reinstall with gcc and the Python headers present")
try:
    import recsys.data.fastcat  # noqa: F401  the converter's C extension, built by pip install
except ImportError as exc:
    problems.append(f"the compiled extension recsys.data.fastcat is missing ({exc}); is gcc installed? reinstall with `pip install -e .`")
try:
    import recsys.data.fastparse  # noqa: F401  the converter's fast text parser, built by pip install
except ImportError as exc:
    problems.append(f"the compiled extension recsys.data.fastparse is missing ({exc}); is gcc installed? reinstall with `pip install -e .`")
if problems:
    sys.exit("install check failed:\n  " + "\n  ".join(problems))
print(
    f"install ok: torch {torch.__version__}, torchrec {md.version('torchrec')}, fbgemm-gpu-cpu {md.version('fbgemm-gpu-cpu')}, recsys.data.fastcat, recsys.data.fastparse, recsys.serving.idpath, recsys.serving.httpfast"
)
