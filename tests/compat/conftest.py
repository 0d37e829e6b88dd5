"""tests/compat runs only in the admitted-version-range stage (`bash .ci/compat`), which builds `.venv-compat` with
the oldest admitted diffusers and the newest transformers 4.x and points UNET_LAB_COMPAT_REF at the main venv's
reference outputs (tests/compat/reference.py). Without that variable (the main `python -m pytest`) nothing here is
collected: the tests compare two venvs, and one venv alone has nothing to compare with.
"""

import os

if not os.environ.get("UNET_LAB_COMPAT_REF"):
    collect_ignore = ["test_compat.py"]
