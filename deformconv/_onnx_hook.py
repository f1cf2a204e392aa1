# Registers the ONNX translations when torch.onnx loads onnxscript's torch_lib ops; never imports onnxscript eagerly.
"""Lazy registration of :mod:`deformconv.onnx`'s translations (deform_conv2d, dcnv3, dcnv4).

``torch.onnx.export(..., dynamo=True)`` builds its registry on every export from the ops in
``onnxscript.function_libs.torch_lib`` (imported on the first export). A one-shot import hook
runs :func:`deformconv.onnx.register` right after that module has loaded, so the plain
export call works after ``import deformconv`` while the import itself stays free of onnx and
onnxscript (optional dependencies, about 1 s to import).
"""

import importlib.abc
import sys
import warnings

TARGET = "onnxscript.function_libs.torch_lib.ops"


def _register() -> None:
    try:
        from . import onnx

        onnx.register()
    except Exception as error:  # an onnxscript without the torch_lib registry this relies on
        warnings.warn(
            f"deformconv could not register its ONNX translation in onnxscript's torch_lib "
            f"({type(error).__name__}: {error}). torch.onnx.export(..., dynamo=True) of a model with "
            "deformconv ops then needs custom_translation_table=deformconv.onnx.custom_translation_table().",
            RuntimeWarning,
            stacklevel=2,
        )


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finds TARGET with the other finders and makes its loader call _register() after executing it."""

    done = False  # one shot; it stays in sys.meta_path (removing it while importlib iterates is unsafe)

    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET or self.done:
            return None
        self.done = True
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _register()

        spec.loader.exec_module = exec_then_register
        return spec


def install() -> None:
    """Register now if torch_lib's ops are already loaded, else once they load."""
    if TARGET in sys.modules:
        _register()
    elif not any(isinstance(finder, _RegisterAfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())
