# Builds the deformconv._C extension: CPU kernels always, CUDA kernels when a CUDA toolkit and a CUDA torch are present.
import glob
import importlib.util
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


# torch guesses CUDA_HOME from the `nvcc` on PATH, which on some machines is a
# wrapper outside the toolkit; prefer the standard location when it exists.
if "CUDA_HOME" not in os.environ and os.path.isfile("/usr/local/cuda/bin/nvcc"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

import torch  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _want_cuda():
    """USE_CUDA=0 forces CPU-only; FORCE_CUDA=1 or TORCH_CUDA_ARCH_LIST builds CUDA without a GPU."""
    if os.environ.get("USE_CUDA", "").strip() == "0":
        return False
    if torch.version.cuda is None or CUDA_HOME is None:
        if _env_flag("FORCE_CUDA"):
            print(
                "deformconv: FORCE_CUDA=1 but torch has no CUDA or no toolkit was found; "
                "building CPU-only",
                file=sys.stderr,
            )
        return False
    return (
        _env_flag("FORCE_CUDA")
        or bool(os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip())
        or torch.cuda.is_available()
    )


def _cuda_wheel_include_dirs():
    """Headers (cublas, cusparse) that ATen/cuda includes but a bare toolkit may lack."""
    dirs = []
    for base in sys.path:
        dirs += glob.glob(os.path.join(base, "nvidia", "cu*", "include"))
    return [d for d in dirs if os.path.isdir(d)]


def build_extension():
    debug = _env_flag("DEBUG")
    opt = ["-O0", "-g"] if debug else ["-O3"]
    cxx_flags = opt + ["-fopenmp"]  # torch adds the C++ standard it needs
    sources = sorted(
        glob.glob("csrc/*.cpp")
        + glob.glob("csrc/common/*.cpp")
        + glob.glob("csrc/cpu/*.cpp")
        + glob.glob("csrc/autocast/*.cpp")
    )
    kwargs = dict(
        name="deformconv._C",
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_link_args=["-fopenmp"],
    )
    if _want_cuda():
        sources += sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp"))
        nvcc_flags = opt + ["--expt-relaxed-constexpr", "-lineinfo", "-DCUDA_HAS_FP16=1"]
        nvcc_flags += os.environ.get("NVCC_FLAGS", "").split()
        kwargs["include_dirs"] += _cuda_wheel_include_dirs()
        kwargs["define_macros"] = [("WITH_CUDA", None)]
        kwargs["extra_compile_args"] = {"cxx": cxx_flags, "nvcc": nvcc_flags}
        print(f"deformconv: building CPU + CUDA kernels (CUDA_HOME={CUDA_HOME})", file=sys.stderr)
        return CUDAExtension(sources=sources, **kwargs)
    kwargs["extra_compile_args"] = {"cxx": cxx_flags}
    print("deformconv: building CPU kernels only", file=sys.stderr)
    return CppExtension(sources=sources, **kwargs)


def _load_linkage_check():
    """deformconv/_linkage.py, loaded by path: the package itself cannot be imported before
    its extension exists."""
    spec = importlib.util.spec_from_file_location(
        "deformconv_linkage", os.path.join(ROOT, "deformconv", "_linkage.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildWithLinkageCheck(BuildExtension.with_options(use_ninja=True)):
    """torch's BuildExtension (ninja), then a check that the linked extension needs the C++
    runtime torch's libc10 needs: a static libstdc++ would turn every C++ error into a crash."""

    def build_extension(self, ext):
        super().build_extension(ext)
        built = self.get_ext_fullpath(ext.name)
        if not os.path.exists(built):  # an in-place build copies it there only afterwards
            built = os.path.join(self.build_lib, self.get_ext_filename(ext.name))
        libc10 = os.path.join(os.path.dirname(torch.__file__), "lib", "libc10.so")
        if os.path.exists(built) and os.path.exists(libc10):
            _load_linkage_check().check_cxx_runtime(built, libc10)


setup(
    packages=find_packages(include=["deformconv", "deformconv.*"]),
    ext_modules=[build_extension()],
    cmdclass={"build_ext": BuildWithLinkageCheck},
)
