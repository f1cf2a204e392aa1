# `import deformconv`: works without the compiled extension (the op says how to build it), leaves train unimported.
import subprocess
import sys
from pathlib import Path

from helpers import child_process_env

ROOT = Path(__file__).resolve().parents[1]


def run_python(code):
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=child_process_env())


def test_op_without_the_extension_raises_a_clear_error():
    code = (
        "import sys; sys.modules['deformconv._C'] = None\n"
        "import torch, deformconv\n"
        "assert not deformconv.HAS_OPS and not deformconv.has_cuda_kernels()\n"
        "x = torch.zeros(1, 1, 3, 3)\n"
        "try:\n"
        "    deformconv.DeformConv2dPack(1, 1, 3)(x)\n"
        "except RuntimeError as error:\n"
        "    assert 'pip install --no-build-isolation -e .' in str(error), error\n"
        "else:\n"
        "    raise AssertionError('no error without the extension')\n"
    )
    run_python(code)


def test_import_does_not_load_the_training_toolkit():
    run_python(
        "import sys, deformconv\n"
        "loaded = [m for m in sys.modules if m.startswith('deformconv.train')]\n"
        "assert not loaded, loaded\n"
        "assert 'matplotlib' not in sys.modules and 'torchvision' not in sys.modules\n"
    )
