# Finds the examples the docs tests run: the ```python blocks of README.md and docs/, and modules with doctests.
"""The examples of the documentation, for ``tests/test_docs_examples.py``.

A Markdown example is a fenced block that opens with a line that is exactly ```` ```python ````
and closes with ```` ``` ```` at the start of a line. The line before the block (blank lines
skipped) may be a marker, an HTML comment that the rendered page does not show:

* ``<!-- test: needs-cuda -->``: runs only with a CUDA GPU and the CUDA kernels built;
* ``<!-- test: needs-module NAME [NAME ...] -->``: runs only where every module named imports;
* ``<!-- test: skip REASON -->``: never runs (a download, for example); the reason is shown.

The blocks of one page run in order in one namespace, so a block may use what an earlier one
defined.
"""

import dataclasses
import importlib.util
import re
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "deformconv"

_OPEN = re.compile(r"^```python\s*$")
_CLOSE = re.compile(r"^```\s*$")
_MARKER = re.compile(r"^<!--\s*test:\s*(?P<kind>[a-z-]+)\s*(?P<arg>.*?)\s*-->\s*$")
_MARKER_KINDS = ("needs-cuda", "needs-module", "skip")


@dataclasses.dataclass(frozen=True)
class Block:
    """One ```python block: its page (relative to the repository root), the line of its first
    code line (1-based), its source, and its marker (``kind``, ``arg``) or None."""

    page: str
    line: int
    source: str
    marker: Optional[tuple] = None

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def markdown_pages() -> List[Path]:
    """README.md and every page under docs/, in a fixed order."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def parse_blocks(text: str, page: str) -> List[Block]:
    """The ```python blocks of one Markdown text. Raises ValueError for an unknown marker or a
    block that is never closed, so a typo cannot silently skip an example."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if not _OPEN.match(lines[i]):
            i += 1
            continue
        marker, j = None, i - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        if j >= 0 and lines[j].lstrip().startswith("<!--") and "test:" in lines[j]:
            m = _MARKER.match(lines[j].strip())
            if m is None or m["kind"] not in _MARKER_KINDS:
                raise ValueError(
                    f"{page}:{j + 1}: unknown test marker {lines[j].strip()!r}: expected one of "
                    + ", ".join(f"<!-- test: {k} ... -->" for k in _MARKER_KINDS)
                )
            marker = (m["kind"], m["arg"])
        end = i + 1
        while end < len(lines) and not _CLOSE.match(lines[end]):
            end += 1
        if end == len(lines):
            raise ValueError(f"{page}:{i + 1}: ```python block is never closed")
        blocks.append(Block(page, i + 2, "\n".join(lines[i + 1 : end]) + "\n", marker))
        i = end + 1
    return blocks


def all_blocks() -> List[Block]:
    """Every ```python block of README.md and docs/, page by page, in page order."""
    blocks = []
    for path in markdown_pages():
        page = path.relative_to(ROOT).as_posix()
        blocks += parse_blocks(path.read_text(encoding="utf-8"), page)
    return blocks


def skip_reason(block: Block) -> Optional[str]:
    """Why the block cannot run here, or None when it can."""
    if block.marker is None:
        return None
    kind, arg = block.marker
    if kind == "skip":
        return f"marked skip: {arg or 'no reason given'}"
    if kind == "needs-module":
        missing = [name for name in arg.split() if importlib.util.find_spec(name) is None]
        return f"needs module(s) not installed: {', '.join(missing)}" if missing else None
    import torch

    import deformconv

    if not (torch.cuda.is_available() and deformconv.has_cuda_kernels()):
        return "needs a CUDA GPU and the CUDA kernels"
    return None


def modules_with_doctests() -> List[str]:
    """Every module of the package whose source holds a ``>>>`` line (dotted names, sorted)."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__main__.py" or not re.search(r"^\s*>>> ", path.read_text(), re.M):
            continue
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names
