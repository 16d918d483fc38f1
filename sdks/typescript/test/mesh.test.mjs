// A browser page, a Node program, a Rust service and the CLI exchange messages and calls
// through a two-node mesh, each on a different transport: the page on node A's WebSocket,
// the Node program on node B's wss://, the Rust service (`fovea serve`) on B's TLS over
// TCP, the CLI on A's QUIC.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";

import { chromium } from "playwright-core";

import { cli, foveaBin, startNode } from "./helpers.mjs";

const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const skip = !existsSync(executablePath) && !process.env.FOVEA_REQUIRE_BROWSER && `no browser at ${executablePath}`;
const SECRET = "a-mesh-secret-for-the-test";

/** Retries `f` until it resolves (discovery crosses the mesh in the background). */
async function eventually(f, what, ms = 15000) {
  const end = Date.now() + ms;
  for (;;) {
    try {
      return await f();
    } catch (e) {
      if (Date.now() > end) throw new Error(`${what}: ${e.message}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}

function spawnReady(cmd, args, env) {
  const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...env } });
  let err = "";
  child.stderr.on("data", (d) => (err += d));
  const ready = new Promise((res, rej) => {
    child.stdout.on("data", (d) => String(d).includes("ready") && res());
    child.on("exit", (code) => rej(new Error(`${cmd} exited (${code}): ${err}`)));
  });
  return { child, ready };
}

test("a page, a Node program, a Rust service and the CLI meet through a two-node mesh", { skip }, async () => {
  const a = await startNode({ admin: true, args: ["--mesh-secret", SECRET] });
  const meshA = a.ready.match(/mesh (quic:\/\/[^ ,)]+)/)[1];
  const b = await startNode({ args: ["--mesh-secret", SECRET, "--join", meshA, "--tcp", "127.0.0.1:0", "--ws-tls", "on"] });
  assert.match(b.ws, /^wss:\/\//);
  const tlsB = b.ready.match(/tls:\/\/[^ ,)]+/)[0];
  const children = [];
  const browser = await chromium.launch({ executablePath, args: ["--no-sandbox"] });
  try {
    // The Node program on B over wss://, trusting B's self-signed certificate.
    const program = spawnReady(process.execPath, [join(import.meta.dirname, "mesh-program.mjs"), b.ws.replace("127.0.0.1", "localhost")], {
      NODE_EXTRA_CA_CERTS: b.cert,
    });
    children.push(program.child);
    // The Rust service on B over TLS on TCP.
    const service = spawnReady(foveaBin(), ["serve", "mesh.upper", "--exec", "tr a-z A-Z", "--url", tlsB, "--ca", b.cert], {});
    children.push(service.child);
    // It says nothing on stdout; an early exit shows as the calls below failing.
    service.ready.catch(() => {});
    await Promise.race([program.ready, new Promise((_, rej) => setTimeout(() => rej(new Error("the Node program did not start")), 15000))]);

    // The CLI on A (QUIC) calls both providers on B.
    const quicA = ["--url", a.quic, "--ca", a.cert];
    assert.equal((await eventually(() => cli(["call", "mesh.double", "21", ...quicA]), "mesh.double from A")).trim(), "42");
    assert.equal((await eventually(() => cli(["call", "mesh.upper", "shout", ...quicA]), "mesh.upper from A")).trim(), "SHOUT");

    // The page on A taps mesh.pong; the CLI pings; the Node program on B answers.
    const page = await (await browser.newContext({ bypassCSP: true })).newPage();
    await page.goto(a.admin + "/");
    await page.waitForFunction(() => document.querySelector("#state")?.textContent.startsWith("live"));
    await page.fill("#tap-pattern", "mesh.pong");
    await page.click("#tap-start");
    await page.waitForFunction(() => document.querySelector("#tap-state")?.textContent.includes("subscribed"));
    await eventually(async () => {
      await cli(["pub", "mesh.ping", "hello", ...quicA]);
      await page.waitForSelector('#tap-log [data-topic="mesh.pong"]', { timeout: 500 });
    }, "a pong in the page");
    assert.match(await page.textContent("#tap-log"), /pong hello/);
  } finally {
    for (const c of children) c.kill("SIGKILL");
    await browser.close();
    await a.stop();
    await b.stop();
  }
});
