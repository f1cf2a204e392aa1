# Every example of the docs runs: the ```python blocks of README.md and docs/, and the package's docstring doctests.
import doctest
import importlib

import pytest
import torch

from docs_examples import Block, all_blocks, modules_with_doctests, parse_blocks, skip_reason

BLOCKS = all_blocks()
DOCTEST_MODULES = modules_with_doctests()
# Modules that import an optional extra: their doctests are skipped, visibly, without it.
NEEDS_EXTRA = {"deformconv.onnx": "onnxscript"}


class _Page:
    """The state of one page's blocks: one namespace and one working directory for all of them."""

    def __init__(self, directory):
        self.directory = directory
        self.namespace = {"__name__": "__main__"}
        self.ran = set()
        self.failed = None


_pages = {}


def _run(block: Block, page: _Page) -> None:
    # Blank lines before the source keep the page's line numbers in tracebacks.
    code = compile("\n" * (block.line - 1) + block.source, block.page, "exec")
    try:
        exec(code, page.namespace)
    except BaseException:
        page.failed = block.id
        raise
    finally:
        page.ran.add(block.id)


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_markdown_example(block, tmp_path_factory, monkeypatch):
    reason = skip_reason(block)
    if reason is not None:
        pytest.skip(reason)
    if block.page not in _pages:
        _pages[block.page] = _Page(tmp_path_factory.mktemp("docs_example"))
        torch.manual_seed(0)
    page = _pages[block.page]
    monkeypatch.chdir(page.directory)  # examples write files (dcn.onnx, dcn.pt2, PNGs)
    # The earlier blocks of the page first, when this one was selected alone (pytest -k).
    for earlier in BLOCKS:
        if earlier is block:
            break
        if earlier.page == block.page and earlier.id not in page.ran:
            if skip_reason(earlier) is None:
                _run(earlier, page)
    if page.failed is not None:
        pytest.fail(f"an earlier block of {block.page} failed: {page.failed}")
    _run(block, page)


@pytest.mark.parametrize("module_name", DOCTEST_MODULES)
def test_docstring_examples(module_name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if module_name in NEEDS_EXTRA:
        pytest.importorskip(NEEDS_EXTRA[module_name], reason=f"{module_name} needs the onnx extra")
    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    runner = doctest.DocTestRunner(optionflags=flags)
    report = []
    torch.manual_seed(0)
    tests = [t for t in finder.find(module, module_name) if t.examples]
    assert tests, f"{module_name} has '>>>' lines but doctest found no example in its docstrings"
    for test in tests:
        runner.run(test, out=report.append)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, "".join(report)


def test_the_parser_sees_blocks_markers_and_rejects_typos():
    text = (
        "intro\n\n```python\na = 1\n```\n\n<!-- test: needs-module numpy scipy -->\n\n"
        "```python\nb = a\n```\n```bash\nnot python\n```\n"
    )
    first, second = parse_blocks(text, "page.md")
    assert (first.line, first.source, first.marker) == (4, "a = 1\n", None)
    assert (second.line, second.marker) == (10, ("needs-module", "numpy scipy"))
    with pytest.raises(ValueError, match="unknown test marker"):
        parse_blocks("<!-- test: need-cuda -->\n```python\nx = 1\n```\n", "page.md")
    with pytest.raises(ValueError, match="never closed"):
        parse_blocks("```python\nx = 1\n", "page.md")
    assert skip_reason(Block("p", 1, "", ("skip", "a download"))) == "marked skip: a download"
    assert "definitely_absent_module" in skip_reason(
        Block("p", 1, "", ("needs-module", "numpy definitely_absent_module"))
    )
