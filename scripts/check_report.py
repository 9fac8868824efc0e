#!/usr/bin/env python
"""Open a `snakemake --report` page in headless Chromium and check that it shows every table and plot of a sweep.

    snakemake results/table_ablation.md --report results/report.html
    python scripts/check_report.py results/report.html --results results --screenshot docs/snakemake_report.png

The expected pages are the files the table jobs wrote into ``--results``: each ``table_*.html`` (its title, the
``<h3>``) and each ``plot_*.png``. For each, the script clicks through the report as a reader does (Results, the
category, the table or plot, the eye) and checks that the table's title or an image is then on the screen. The
screenshot shows the first table. Needs Chromium and its driver (Debian: ``apt-get install chromium
chromium-driver``) and selenium (``pip install selenium``). Exit status 1 names what is missing.
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import sys
import time
from pathlib import Path

log = logging.getLogger("check_report")


def _browser(width: int, height: int):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={width},{height}"):
        options.add_argument(arg)
    driver = shutil.which("chromedriver")
    if driver is None:
        raise SystemExit("check_report: no chromedriver on PATH; install it: apt-get install chromium chromium-driver")
    return webdriver.Chrome(options=options, service=Service(driver))


def _click(browser, text: str, pause: float = 0.7) -> None:
    from selenium.webdriver.common.by import By

    browser.find_element(By.XPATH, f"//*[normalize-space(text())={text!r}]").click()
    time.sleep(pause)


def _shown(browser) -> str:
    """Everything on the screen: the page's text plus that of its frames (an HTML result opens in one)."""
    from selenium.webdriver.common.by import By

    texts = [browser.find_element(By.TAG_NAME, "body").text]
    for frame in browser.find_elements(By.TAG_NAME, "iframe"):
        browser.switch_to.frame(frame)
        texts.append(browser.find_element(By.TAG_NAME, "body").text)
        browser.switch_to.default_content()
    return "\n".join(texts)


def check(report: Path, results: Path, screenshot: Path | None) -> list[str]:
    """What the report lacks (empty: every table and plot shows)."""
    from selenium.webdriver.common.by import By

    tables = sorted(results.glob("table_*.html"))
    plots = sorted(results.glob("plot_*.png"))
    if not tables:
        return [f"no table_*.html under {results}: run the table jobs first"]
    titles = {t.name: re.search(r"<h3>(.*?)</h3>", t.read_text(encoding="utf-8")).group(1) for t in tables}
    missing = []
    browser = _browser(1500, 1000)
    try:
        browser.get(report.resolve().as_uri())
        time.sleep(2)
        _click(browser, "Results")
        _click(browser, "Tables")
        menu = {"Results", "Tables", "Plots", "Workflow", "Statistics", "About"}
        subcategories = [e.text for e in browser.find_elements(By.XPATH, "//a[@href='#']/span") if e.text not in menu]
        subcategories = [s for s in subcategories if s]
        first = True
        for sub in subcategories:
            _click(browser, sub)
            _click(browser, "html")  # the table's page (the other file of each table: its CSV)
            browser.find_element(By.XPATH, "//a[@iconname='eye']").click()
            time.sleep(1.5)
            screen = _shown(browser)
            found = [name for name, title in titles.items() if title.split(" — ")[0] in screen]
            log.info("%s: %s shown", sub, ", ".join(found) or "no table")
            titles = {n: t for n, t in titles.items() if n not in found}
            if first and screenshot is not None:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                browser.save_screenshot(str(screenshot))
                first = False
            browser.back()
            _click(browser, "Results")
            _click(browser, "Tables")
        missing += [f"table {name} ({title})" for name, title in titles.items()]
        if plots:
            _click(browser, "Results")
            _click(browser, "Plots")
            rows = browser.find_elements(By.XPATH, "//a[@iconname='eye']")
            if len(rows) != len(plots):
                missing.append(f"{len(plots)} plots written, {len(rows)} in the report")
            for k in range(len(rows)):
                browser.find_elements(By.XPATH, "//a[@iconname='eye']")[k].click()
                time.sleep(1)
                if not browser.find_elements(By.XPATH, "//img[starts-with(@src, 'data:image/png')]"):
                    missing.append(f"plot {k + 1}: no image shown")
                log.info("plot %d of %d shown", k + 1, len(rows))
                browser.back()
                _click(browser, "Results")
                _click(browser, "Plots")
    finally:
        browser.quit()
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", type=Path, help="the page snakemake --report wrote")
    parser.add_argument("--results", type=Path, required=True, help="the sweep's results folder (sweep.results)")
    parser.add_argument("--screenshot", type=Path, default=None, help="save a screenshot of the first table here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    missing = check(args.report, args.results, args.screenshot)
    if missing:
        log.error("check_report: %s lacks %s", args.report, "; ".join(missing))
        return 1
    log.info("check_report: every table and plot of %s shows in %s", args.results, args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
