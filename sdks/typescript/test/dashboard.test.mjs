// The node's dashboard in a real headless browser: Debian's chromium driven by Playwright
// (CHROMIUM names another binary). A message published from the CLI and from this SDK
// appears in the live tap, and the traffic chart moves.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { test } from "node:test";

import { chromium } from "playwright-core";

import { connect } from "../dist/index.js";
import { cli, startNode } from "./helpers.mjs";

const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
// CI sets FOVEA_REQUIRE_BROWSER: there a missing browser fails the test instead of skipping it.
const skip = !existsSync(executablePath) && !process.env.FOVEA_REQUIRE_BROWSER && `no browser at ${executablePath} (apt-get install chromium)`;

test("the dashboard shows the node live and taps messages", { skip }, async () => {
  const node = await startNode({ admin: true });
  const browser = await chromium.launch({ executablePath, args: ["--no-sandbox"] });
  try {
    // The page forbids eval (its CSP); Playwright evaluates its waits that way.
    const page = await (await browser.newContext({ bypassCSP: true })).newPage();
    const errors = [];
    page.on("pageerror", (e) => errors.push(e.message));
    await page.goto(node.admin + "/");
    await page.waitForFunction(() => document.querySelector("#state")?.textContent.startsWith("live"));
    assert.match(await page.textContent("#meta"), /ws:\/\/127\.0\.0\.1:\d+/);

    // The tap: subscribe from the page, publish from the CLI (QUIC) and the SDK (WebSocket).
    await page.fill("#tap-pattern", "dash.>");
    await page.click("#tap-start");
    await page.waitForFunction(() => document.querySelector("#tap-state")?.textContent.includes("subscribed"));
    await cli(["pub", "dash.cli", "from the CLI", "--url", node.quic, "--ca", node.cert]);
    const client = await connect(node.ws, { name: "dashboard test" });
    await client.publish("dash.sdk", "from TypeScript");
    await page.waitForSelector('#tap-log [data-topic="dash.cli"]');
    await page.waitForSelector('#tap-log [data-topic="dash.sdk"]');
    const tapped = await page.textContent("#tap-log");
    assert.ok(tapped.includes("from the CLI") && tapped.includes("from TypeScript"), tapped);

    // The charts move: a burst of messages shows as a rate, and the total grows.
    const before = await page.textContent('[data-total="messages in"]');
    for (let i = 0; i < 2000; i++) await client.publish("load.x", "x");
    await client.flush();
    await page.waitForFunction(
      (b) => document.querySelector('[data-total="messages in"]')?.textContent !== b &&
        [...document.querySelectorAll('[data-rate="msgs_in"]')].some((e) => !e.textContent.startsWith("0/s")),
      before,
    );
    // The connections table and the transport counts include the SDK's WebSocket.
    await page.waitForFunction(() => Number(document.querySelector('[data-transport="ws"]')?.textContent) >= 2);
    await page.waitForFunction(() => Number(document.querySelector("#charts polyline")?.dataset.points) >= 3);
    assert.deepEqual(errors, [], "no script error on the page");
    await client.close();
  } finally {
    await browser.close();
    await node.stop();
  }
});
