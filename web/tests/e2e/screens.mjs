// What the end-to-end test checks of each main screen besides behaviour:
// that it fits (nothing wider than the screen; on a phone, controls of at
// least 44 px), accessibility (axe-core: no serious or critical violation)
// and looks (a screenshot compared with the committed baseline in
// tests/e2e/baselines/).
//
// Times are masked (they are the real clock's); the pointer is parked in a
// corner and transitions are off, so the same build draws the same pixels.
// After a reviewed change of the looks, write the baselines anew:
//
//   UPDATE_SCREENSHOTS=1 npm run e2e
//
// and commit the PNGs (web/README.md).

import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import pixelmatch from "pixelmatch";
import { PNG } from "pngjs";

const here = dirname(fileURLToPath(import.meta.url));
const baselines = join(here, "baselines");
const axeSource = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");
/** Pixels that may differ (anti-aliasing, a caret) before a screen counts as changed. */
const TOLERANCE = 0.002;
const update = process.env.UPDATE_SCREENSHOTS === "1";

/**
 * Runs axe-core in the page (through the DevTools protocol, which the
 * page's Content-Security-Policy does not govern) and fails on any serious
 * or critical violation, naming the rule and the elements.
 */
export async function audit(page, screen) {
  if (!(await page.evaluate(() => "axe" in window))) await page.evaluate(axeSource);
  const violations = await page.evaluate(async () => {
    const result = await window.axe.run(document, { resultTypes: ["violations"] });
    return result.violations.map((v) => ({
      id: v.id,
      impact: v.impact,
      help: v.help,
      nodes: v.nodes.slice(0, 5).map((n) => n.target.join(" ")),
    }));
  });
  const bad = violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  if (bad.length) {
    const lines = bad.map((v) => `  ${v.impact} ${v.id}: ${v.help}\n    ${v.nodes.join("\n    ")}`);
    throw new Error(`accessibility of ${screen}:\n${lines.join("\n")}`);
  }
}

/** Compares the page with `baselines/<name>.png` (writing it when asked, or when there is none yet). */
export async function looks(page, name, results) {
  await page.mouse.move(0, 0);
  await page.evaluate(() => document.activeElement instanceof HTMLElement && document.activeElement.blur());
  await page.waitForTimeout(200);
  // Transitions finished, the caret hidden (no style is injected: the page's
  // Content-Security-Policy would refuse it, rightly).
  const shot = await page.screenshot({
    mask: [page.locator("time")],
    maskColor: "#888888",
    animations: "disabled",
    caret: "hide",
  });
  mkdirSync(results, { recursive: true });
  writeFileSync(join(results, `${name}.png`), shot);
  const baseline = join(baselines, `${name}.png`);
  if (update || !existsSync(baseline)) {
    mkdirSync(baselines, { recursive: true });
    writeFileSync(baseline, shot);
    if (!update) throw new Error(`no baseline for ${name}: wrote ${baseline}; review and commit it`);
    return;
  }
  const expected = PNG.sync.read(readFileSync(baseline));
  const actual = PNG.sync.read(shot);
  if (expected.width !== actual.width || expected.height !== actual.height) {
    throw new Error(`${name}: ${actual.width}x${actual.height}, the baseline is ${expected.width}x${expected.height}`);
  }
  const diff = new PNG({ width: actual.width, height: actual.height });
  const changed = pixelmatch(expected.data, actual.data, diff.data, actual.width, actual.height, { threshold: 0.1 });
  if (changed > TOLERANCE * actual.width * actual.height) {
    writeFileSync(join(results, `${name}.diff.png`), PNG.sync.write(diff));
    throw new Error(
      `${name} looks different from its baseline (${changed} pixels): see test-results/${name}.png and ` +
        `${name}.diff.png; if the change is meant, UPDATE_SCREENSHOTS=1 npm run e2e and commit the baseline`,
    );
  }
}

/**
 * Nothing wider than the screen; on a phone, every control visible at
 * least 44 px square (a finger's width).
 */
export async function fits(page, screen) {
  const problems = await page.evaluate(() => {
    const found = [];
    if (document.documentElement.scrollWidth > window.innerWidth) {
      found.push(`the page is ${document.documentElement.scrollWidth} px wide in a ${window.innerWidth} px screen`);
    }
    if (window.innerWidth < 700) {
      for (const control of document.querySelectorAll("button, a[href], input:not([type=hidden]), textarea")) {
        const box = control.getBoundingClientRect();
        const shown = box.width > 1 && box.height > 1 && getComputedStyle(control).visibility !== "hidden";
        if (shown && control.tagName === "BUTTON" && (box.width < 43.5 || box.height < 43.5)) {
          found.push(`"${control.getAttribute("aria-label") ?? control.textContent}" is ${Math.round(box.width)}x${Math.round(box.height)} px`);
        }
      }
    }
    return found;
  });
  if (problems.length) throw new Error(`${screen} does not fit:\n  ${problems.join("\n  ")}`);
}

/** Every check of one screen. */
export async function check(page, name, results) {
  await fits(page, name);
  await audit(page, name);
  await looks(page, name, results);
}
