# The C++ runtime a shared library links (DT_NEEDED), read with the stdlib: the check that the extension shares torch's.
"""An extension whose libstdc++ is linked statically has its own copy of the C++ exception
machinery; every exception it throws (every failed ``TORCH_CHECK``) then meets torch's
shared libstdc++ and kills the interpreter instead of raising. Some toolchains link it
statically by default (a wrapper g++ with its own ``-B`` paths did). ``setup.py`` loads this
file by path after linking ``deformconv._C`` and refuses an extension that does not need the
C++ runtime that torch's ``libc10`` needs.

Example::

    >>> needed_libraries("/usr/lib/x86_64-linux-gnu/libstdc++.so.6")  # doctest: +SKIP
    ['libm.so.6', 'libc.so.6', 'ld-linux-x86-64.so.2']
"""

from __future__ import annotations

import os
import struct
from typing import List, Optional

__all__ = ["needed_libraries", "cxx_runtimes", "check_cxx_runtime"]

_SHT_DYNAMIC = 6
_DT_NULL, _DT_NEEDED = 0, 1
# Names of the C++ standard libraries' shared objects start with these.
_CXX_RUNTIMES = ("libstdc++.so", "libc++.so")


def needed_libraries(path: str) -> Optional[List[str]]:
    """The DT_NEEDED entries of the ELF file at ``path``, in order; None when it is not an
    ELF file or has no dynamic section (a static executable)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] not in (1, 2) or data[5] not in (1, 2):
        return None
    is64 = data[4] == 2
    end = "<" if data[5] == 1 else ">"
    if is64:
        (shoff,) = struct.unpack_from(end + "Q", data, 0x28)
        shentsize, shnum = struct.unpack_from(end + "HH", data, 0x3A)
        section = end + "IIQQQQIIQQ"  # name type flags addr offset size link info align entsize
        entry = end + "qQ"
    else:
        (shoff,) = struct.unpack_from(end + "I", data, 0x20)
        shentsize, shnum = struct.unpack_from(end + "HH", data, 0x2E)
        section = end + "IIIIIIIIII"
        entry = end + "iI"

    def header(index):
        fields = struct.unpack_from(section, data, shoff + index * shentsize)
        return fields[1], fields[4], fields[5], fields[6]  # type, offset, size, link

    for index in range(shnum):
        kind, offset, size, link = header(index)
        if kind != _SHT_DYNAMIC:
            continue
        strings = header(link)[1]
        names = []
        for at in range(offset, offset + size, struct.calcsize(entry)):
            tag, value = struct.unpack_from(entry, data, at)
            if tag == _DT_NULL:
                break
            if tag == _DT_NEEDED:
                stop = data.index(b"\0", strings + value)
                names.append(data[strings + value : stop].decode())
        return names
    return None


def cxx_runtimes(path: str) -> List[str]:
    """The C++ standard libraries (libstdc++, libc++) among ``path``'s DT_NEEDED entries."""
    return [name for name in needed_libraries(path) or [] if name.startswith(_CXX_RUNTIMES)]


def check_cxx_runtime(extension: str, reference: str) -> None:
    """Raises RuntimeError when ``extension`` does not need a C++ runtime that ``reference``
    (torch's libc10) needs: it was linked with a static libstdc++. Nothing is checked when
    ``reference`` is not an ELF file that needs one (macOS, Windows, another toolchain)."""
    wanted = cxx_runtimes(reference)
    missing = [name for name in wanted if name not in cxx_runtimes(extension)]
    if not missing:
        return
    compiler = os.environ.get("CXX", "the default c++")
    raise RuntimeError(
        f"{extension} does not link {', '.join(missing)} dynamically, while torch "
        f"({os.path.basename(reference)}) does: the compiler ({compiler}) linked a static "
        "libstdc++, and every C++ error of the extension would then kill the interpreter "
        "instead of raising. Rebuild with the compiler torch was built with, e.g. "
        "CXX=/usr/bin/g++ CC=/usr/bin/gcc pip install --no-build-isolation -e ."
    )
