# Atomic PNG writes of matplotlib figures (temporary file, then os.replace), shared by viz and the training reports.
import os
import tempfile


def write_png(fig, path: str) -> str:
    """Write the matplotlib figure ``fig`` to ``path`` as a PNG (100 dpi) without ever leaving a
    partial file there: it is written to a temporary file in the same folder and moved into place.
    Creates the folder. Returns ``path``; ``fig`` stays open."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=folder)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=100, format="png")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
