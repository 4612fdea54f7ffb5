"""What the browser tests read off the console pages (selenium)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selenium.webdriver.common.by import By

from tests.tunnelhelp import is_flat


def canvas_not_flat(driver: Any, png: Path) -> bool:
    """A screenshot of the noVNC page's canvas (saved as ``png``) is not
    one flat colour."""
    canvases = driver.find_elements(By.CSS_SELECTOR, "#screen canvas")
    if not canvases or not canvases[0].size["width"]:
        return False
    png.write_bytes(canvases[0].screenshot_as_png)
    return not is_flat(png)
