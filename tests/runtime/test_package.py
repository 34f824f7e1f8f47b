"""The package's public names survive imports of same-named submodules."""

from __future__ import annotations

import subprocess
import sys


def test_supervise_stays_the_decorator_after_its_module_is_imported():
    code = (
        "from atlas_middleware.supervise import Supervisor\n"  # the module is imported first
        "import atlas_middleware as atlas\n"
        "import atlas_middleware.evaluate\n"
        "assert callable(atlas.supervise) and atlas.supervise.__name__ == 'supervise'\n"
        "assert atlas.guidance.__name__ == 'guidance'\n"
        "import sys; assert 'torch' not in sys.modules and 'langgraph' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
