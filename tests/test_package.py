# `import deformconv` without the extension, without train; the extension shares torch's C++ runtime.
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import deformconv
from deformconv import _linkage
from helpers import run_python

LIBC10 = Path(torch.__file__).parent / "lib" / "libc10.so"


def run_checked(code):
    result = run_python(["-c", code])
    assert result.returncode == 0, result.stderr


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
    run_checked(code)


def test_import_does_not_load_the_training_toolkit():
    run_checked(
        "import sys, deformconv\n"
        "loaded = [m for m in sys.modules if m.startswith('deformconv.train')]\n"
        "assert not loaded, loaded\n"
        "assert 'matplotlib' not in sys.modules and 'torchvision' not in sys.modules\n"
    )


@pytest.mark.skipif(not LIBC10.exists(), reason="torch has no libc10.so here (not Linux)")
def test_extension_needs_the_cxx_runtime_torch_needs():
    """A statically linked libstdc++ turns every C++ error into a crash: the built _C must
    need the same shared C++ runtime as torch's libc10."""
    wanted = _linkage.cxx_runtimes(str(LIBC10))
    assert wanted, "libc10 needs no shared C++ runtime: nothing to compare"
    assert set(wanted) <= set(_linkage.cxx_runtimes(deformconv._C.__file__))
    _linkage.check_cxx_runtime(deformconv._C.__file__, str(LIBC10))


def build_shared_object(tmp_path, *flags):
    """A tiny C++ shared object that throws, built with the system g++ and `flags`."""
    source = tmp_path / "throws.cpp"
    source.write_text(
        '#include <stdexcept>\nextern "C" void f() { throw std::runtime_error("x"); }\n'
    )
    out = tmp_path / f"throws{len(flags)}.so"
    command = ["g++", "-shared", "-fPIC", *flags, str(source), "-o", str(out)]
    if subprocess.run(command, capture_output=True).returncode != 0:
        pytest.skip(f"cannot build a test library with {' '.join(command)}")
    return str(out)


@pytest.mark.skipif(
    shutil.which("g++") is None or not LIBC10.exists(), reason="needs g++ and libc10"
)
def test_build_check_rejects_a_static_libstdcxx(tmp_path, monkeypatch):
    """setup.py's check (deformconv._linkage) on libraries linked both ways."""
    shared = build_shared_object(tmp_path)
    assert "libstdc++.so.6" in _linkage.needed_libraries(shared)
    _linkage.check_cxx_runtime(shared, str(LIBC10))
    static = build_shared_object(tmp_path, "-static-libstdc++")
    assert not _linkage.cxx_runtimes(static)
    monkeypatch.setenv("CXX", "/opt/wrapped/g++")
    with pytest.raises(
        RuntimeError, match=r"/opt/wrapped/g\+\+\) linked a static libstdc\+\+"
    ) as error:
        _linkage.check_cxx_runtime(static, str(LIBC10))
    assert "CXX=/usr/bin/g++ CC=/usr/bin/gcc" in str(error.value)


def test_linkage_reader_ignores_files_that_are_not_elf(tmp_path):
    text = tmp_path / "not_elf.so"
    text.write_text("hello")
    assert _linkage.needed_libraries(str(text)) is None
    assert _linkage.cxx_runtimes(str(text)) == []
