"""A session report as PDF, when a converter is installed: headless Chromium's print-to-PDF,
which honours the report's print CSS (`@page { size: A4 }`). Optional: the HTML report needs
nothing; `records report ID --out FILE.pdf` says plainly when no converter is found.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

# Debian's and Ubuntu's package names, then Google's builds.
CONVERTERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# A one-page report prints in about a second; a cold browser start can take several.
CONVERT_TIMEOUT_S = 90.0


class PdfError(Exception):
    """No PDF could be made; the message says why in plain words."""


def find_converter() -> str | None:
    """The path of an installed Chromium, or None."""
    return next((found for name in CONVERTERS if (found := shutil.which(name))), None)


def html_to_pdf(text: str, out: Path, converter: str | None = None) -> None:
    """Print the HTML document `text` to the PDF file `out`."""
    browser = converter or find_converter()
    if browser is None:
        raise PdfError("no PDF converter found: install chromium (apt install chromium), or "
                       "write HTML (--out FILE.html) and print it from a browser")
    with tempfile.TemporaryDirectory(prefix="modctl-report-") as tmp:
        page = Path(tmp) / "report.html"
        page.write_text(text, encoding="utf-8")
        target = Path(tmp) / "report.pdf"
        command = [browser, "--headless", "--disable-gpu", "--no-first-run",
                   "--no-pdf-header-footer", f"--user-data-dir={Path(tmp) / 'profile'}",
                   f"--print-to-pdf={target}", page.as_uri()]
        if os.geteuid() == 0:  # Chromium refuses to run as root inside its sandbox
            command.insert(1, "--no-sandbox")
        try:
            done = subprocess.run(command, capture_output=True, text=True,
                                  timeout=CONVERT_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PdfError(f"{browser} could not print the report: {exc}") from None
        if not target.is_file() or target.stat().st_size == 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise PdfError(f"{browser} made no PDF (exit {done.returncode}): {last}")
        try:
            shutil.copyfile(target, out)
        except OSError as exc:
            raise PdfError(f"cannot write {out}: {exc.strerror or exc}") from None


def pdf_page_count(data: bytes) -> int:
    """Pages of a PDF as Chromium writes it (its page tree's /Count)."""
    counts = [int(m) for m in re.findall(rb"/Type\s*/Pages\b[^>]*?/Count\s+(\d+)", data)]
    counts += [int(m) for m in re.findall(rb"/Count\s+(\d+)[^>]*?/Type\s*/Pages\b", data)]
    if counts:
        return max(counts)
    return len(re.findall(rb"/Type\s*/Page\b(?!s)", data))
