// The TypeScript SDK against real nodes: pub/sub, queue groups, RPC and its errors, tools,
// the Rust CLI on QUIC, reconnection, credentials.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import {
  AuthError,
  Code,
  ConnectError,
  InputRequiredError,
  NoProviderError,
  NotAnsweredError,
  ProviderDisconnectedError,
  RemoteError,
  TimeoutError,
  connect,
} from "../dist/index.js";
import { spawn } from "node:child_process";

import { cli, foveaBin, freePort, startNode, within } from "./helpers.mjs";

describe("one node", () => {
  let node;
  before(async () => (node = await startNode()));
  after(async () => node.stop());

  test("messages reach wildcard subscribers with their headers", async () => {
    const a = await connect(node.ws);
    const b = await connect(node.ws);
    const all = await a.subscribe("sensors.>");
    const temps = await b.subscribe("sensors.*.temp");
    await b.publish("sensors.kitchen.temp", "21.5", { headers: { unit: "C" } });
    await b.publish("sensors.kitchen.humidity", new Uint8Array([1, 2, 3]));
    const first = (await within(all.next())) ;
    assert.equal(first.topic, "sensors.kitchen.temp");
    assert.equal(first.text(), "21.5");
    assert.deepEqual(first.headers, { unit: "C" });
    const second = await within(all.next());
    assert.deepEqual([...second.payload], [1, 2, 3]);
    const t = await within(temps.next());
    assert.equal(t.topic, "sensors.kitchen.temp");
    await a.close();
    await b.close();
  });

  test("a queue group shares the messages: each goes to one member", async () => {
    const pub = await connect(node.ws);
    const members = [await connect(node.ws), await connect(node.ws)];
    const subs = await Promise.all(members.map((m) => m.subscribe("jobs.*", { group: "workers" })));
    for (let i = 0; i < 40; i++) await pub.publish("jobs.run", String(i));
    await pub.flush();
    const got = [];
    for (const s of subs) {
      // One pending `next()` at a time: an abandoned one would take a message.
      let next = s.next();
      for (;;) {
        const m = await Promise.race([next, new Promise((r) => setTimeout(() => r(undefined), 300))]);
        if (!m) break;
        got.push(Number(m.text()));
        next = s.next();
      }
    }
    got.sort((x, y) => x - y);
    assert.deepEqual(got, [...Array(40).keys()], "each message exactly once across the group");
    for (const c of [pub, ...members]) await c.close();
  });

  test("calls reach a provider; every failure is a typed error", async () => {
    const provider = await connect(node.ws);
    const caller = await connect(node.ws);
    const reg = await provider.register("math.double");
    (async () => {
      for await (const req of reg) {
        if (req.text() === "bad") req.fail("not a number");
        else if (req.text() === "slow") continue; // never answered
        else req.respond(String(2 * Number(req.text())), { headers: { by: "ts" } });
      }
    })();
    const answer = await caller.call("math.double", "21", { timeout: 2000 });
    assert.equal(new TextDecoder().decode(answer), "42");
    const full = await caller.request("math.double", "5");
    assert.deepEqual(full.headers, { by: "ts" });
    await assert.rejects(caller.call("math.double", "bad"), (e) => e instanceof RemoteError && e.code === 0x1000 && /not a number/.test(e.message));
    await assert.rejects(caller.call("nobody.home", ""), NoProviderError);
    await assert.rejects(caller.call("math.double", "slow", { timeout: 300 }), TimeoutError);

    const leaving = await connect(node.ws);
    const r2 = await leaving.register("svc.leaving");
    const pending = caller.call("svc.leaving", "x", { timeout: 5000 }).catch((e) => e);
    await within(r2.next());
    await leaving.close();
    assert.ok((await pending) instanceof ProviderDisconnectedError);
    await provider.close();
    await caller.close();
  });

  test("the Rust CLI on QUIC and this SDK on WebSocket meet", async () => {
    const ts = await connect(node.ws);
    const sub = await ts.subscribe("cli.>");
    await cli(["pub", "cli.hello", "from rust", "--url", node.quic, "--ca", node.cert]);
    assert.equal((await within(sub.next())).text(), "from rust");

    const reg = await ts.register("ts.upper", { tool: { description: "Upper-cases text", inputSchema: { type: "object" } } });
    (async () => {
      for await (const req of reg) req.respond(req.text().toUpperCase());
    })();
    const out = await cli(["call", "ts.upper", "shout", "--url", node.quic, "--ca", node.cert]);
    assert.equal(out.trim(), "SHOUT");
    await ts.close();
  });

  test("streamed calls: chunks as they come, payloads larger than a frame, the Rust CLI on the other end", async () => {
    const provider = await connect(node.ws);
    const caller = await connect(node.ws);
    const say = await provider.register("llm.say");
    (async () => {
      for await (const req of say) {
        assert.ok(req.answerStreams);
        for (const t of ["Hello", ", ", "world"]) await req.send(t);
        req.respond("!");
      }
    })();
    const parts = [];
    for await (const chunk of await caller.callStream("llm.say", "")) parts.push(new TextDecoder().decode(chunk));
    assert.deepEqual(parts, ["Hello", ", ", "world", "!"]);

    // 3 MB each way: the request streamed by callStream, the answer by respond.
    const echo = await provider.register("blob.echo");
    (async () => {
      for await (const req of echo) {
        assert.ok(req.requestStreams);
        const rest = await req.body.collect();
        const all = new Uint8Array(req.payload.length + rest.length);
        all.set(req.payload, 0);
        all.set(rest, req.payload.length);
        req.respond(all);
      }
    })();
    const big = new Uint8Array(3_000_000).map((_, i) => i % 251);
    const back = await within((await caller.callStream("blob.echo", big, { timeout: 20000 })).collect());
    assert.equal(back.length, big.length);
    assert.ok(back.every((b, i) => b === big[i]), "the answer came back changed");

    // A Rust provider from the CLI, line by line, to this SDK.
    const serve = spawn(foveaBin(), ["serve", "sh.lines", "--exec", "printf 'a\\nb\\n'", "--stream", "--url", node.quic, "--ca", node.cert], { stdio: ["ignore", "ignore", "pipe"] });
    await new Promise((res) => serve.stderr.once("data", res));
    const lines = [];
    for await (const chunk of await caller.callStream("sh.lines", "")) lines.push(new TextDecoder().decode(chunk));
    assert.deepEqual(lines, ["a\n", "b\n"]);
    serve.kill();
    await provider.close();
    await caller.close();
  });

  test("messages larger than a frame: published in parts, received whole, from this SDK and the Rust CLI", async () => {
    const sub = await connect(node.ws);
    const pub = await connect(node.ws);
    const files = await sub.subscribe("big.>");
    // 3 MB through `publish`: streamed by itself (protocol 6).
    const big = new Uint8Array(3_000_000).map((_, i) => (i * 7) % 251);
    await pub.publish("big.one", big);
    const m = await within(files.next(), 20000);
    assert.equal(m.topic, "big.one");
    assert.equal(m.payload.length, big.length);
    assert.ok(m.payload.every((b, i) => b === big[i]), "the message came out changed");

    // Written as it goes, with headers.
    const stream = pub.publishStream("big.parts", { headers: { kind: "log" }, first: "a;" });
    for (let i = 0; i < 100; i++) await stream.send(`${i};`);
    stream.finish();
    const parts = await within(files.next(), 20000);
    assert.deepEqual(parts.headers, { kind: "log" });
    assert.equal(parts.text(), "a;" + Array.from({ length: 100 }, (_, i) => `${i};`).join(""));

    // A file from the Rust CLI on QUIC, larger than a frame.
    const { mkdtempSync, writeFileSync } = await import("node:fs");
    const { join } = await import("node:path");
    const { tmpdir } = await import("node:os");
    const file = join(mkdtempSync(join(tmpdir(), "fovea-ts-")), "big.bin");
    writeFileSync(file, big);
    await cli(["pub", "big.file", "--file", file, "--url", node.quic, "--ca", node.cert]);
    const fromCli = await within(files.next(), 20000);
    assert.equal(fromCli.topic, "big.file");
    assert.ok(fromCli.payload.length === big.length && fromCli.payload.every((b, i) => b === big[i]));
    await sub.close();
    await pub.close();
  });

  test("messages a slow reader's queue cannot hold are counted as dropped", async () => {
    const sub_client = await connect(node.ws, { maxPending: 10 });
    const pub = await connect(node.ws);
    const sub = await sub_client.subscribe("slow.>");
    const told = [];
    sub.ondropped = (n) => told.push(n);
    for (let i = 0; i < 50; i++) await pub.publish("slow.x", String(i));
    await pub.flush();
    await sub_client.flush();
    assert.equal(sub.dropped, 40, "ten kept, the newest forty dropped");
    assert.equal(told.reduce((a, b) => a + b, 0), 40);
    const first = await sub.next();
    assert.equal(first.text(), "0", "what was kept arrives in order");
    await sub_client.close();
    await pub.close();
  });

  test("after close, operations fail and iteration ends", async () => {
    const c = await connect(node.ws);
    const sub = await c.subscribe("x.>");
    await c.close();
    assert.equal(await sub.next(), undefined);
    await assert.rejects(c.publish("x.y", "z"));
  });
});

test("a client reconnects to a restarted node and restores its subscriptions", async () => {
  const port = await freePort();
  let node = await startNode({ ws: port });
  const sub_client = await connect(node.ws, { maxReconnectDelay: 200 });
  const sub = await sub_client.subscribe("again.>");
  await node.stop();
  node = await startNode({ ws: port, dir: node.dir });
  const pub = await connect(node.ws);
  let got;
  const next = sub.next();
  for (let i = 0; i < 100 && !got; i++) {
    await pub.publish("again.x", "back");
    got = await Promise.race([next, new Promise((r) => setTimeout(() => r(undefined), 100))]);
  }
  assert.equal(got?.text(), "back");
  await sub_client.close();
  await pub.close();
  await node.stop();
});

test("a wrong token is an AuthError; no node is a ConnectError", async () => {
  const node = await startNode({
    config: `
[[realm]]
name = "private"
[[realm.user]]
name = "alice"
token_sha256 = "27042f4e6eca7d0b2a7ee4026df2ecfa51d3339e6d122aa099118ecd8563bad9"
`,
  });
  await assert.rejects(connect(node.ws, { realm: "private", token: "wrong" }), AuthError);
  const ok = await connect(node.ws, { realm: "private", token: "right" });
  await ok.close();
  await node.stop();
  await assert.rejects(connect(node.ws, { connectTimeout: 2000 }), ConnectError);
  await assert.rejects(connect("quic://127.0.0.1:4433"), ConnectError);
});

test("a resource and a prompt served from TypeScript reach an MCP agent", async () => {
  const node = await startNode({ args: ["--mcp", "127.0.0.1:0"] });
  const endpoint = node.ready.match(/mcp (http:\/\/[^ ,)]+)/)[1];
  const ts = await connect(node.ws);
  const pages = await ts.registerResource("ts.pages", { uriTemplate: "ts://pages/{n}", mimeType: "text/plain" });
  const hello = await ts.registerPrompt("ts.hello", { description: "Greets.", arguments: [{ name: "who", required: true }] });
  (async () => {
    for await (const req of pages) {
      assert.equal(req.mcpMethod, "resources/read");
      const n = req.json().variables.n;
      if (n === "0") req.fail("no page 0", Code.NotFound);
      else req.respond(`page ${n}`);
    }
  })();
  (async () => {
    for await (const req of hello) req.respond(`Say hello to ${req.json().arguments.who}.`);
  })();
  const meta = { "io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {} };
  const ask = async (method, name, params) => {
    const res = await fetch(endpoint, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        accept: "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": method,
        "mcp-name": name,
      },
      body: JSON.stringify({ jsonrpc: "2.0", id: 1, method, params: { ...params, _meta: meta } }),
    });
    return res.json();
  };
  const read = await ask("resources/read", "ts://pages/4", { uri: "ts://pages/4" });
  assert.equal(read.result.contents[0].text, "page 4", JSON.stringify(read));
  const missing = await ask("resources/read", "ts://pages/0", { uri: "ts://pages/0" });
  assert.equal(missing.error.code, -32602, JSON.stringify(missing));
  const prompt = await ask("prompts/get", "ts__hello", { name: "ts__hello", arguments: { who: "Ada" } });
  assert.equal(prompt.result.messages[0].content.text, "Say hello to Ada.", JSON.stringify(prompt));
  await ts.close();
  await node.stop();
});

test("a TypeScript provider's question reaches a 2026-07-28 agent as an input-required result", async () => {
  const node = await startNode({ args: ["--mcp", "127.0.0.1:0"] });
  const endpoint = node.ready.match(/mcp (http:\/\/[^ ,)]+)/)[1];
  const ts = await connect(node.ws);
  const reg = await ts.register("ts.greet", { tool: { description: "Asks a name." } });
  let runs = 0;
  (async () => {
    for await (const req of reg) {
      runs += 1;
      const form = { message: "Your name?", requestedSchema: { type: "object", properties: { name: { type: "string" } } } };
      try {
        const answer = await req.ask("elicitation/create", form, "name");
        req.respond(`Hello, ${answer.content.name}!`);
      } catch (e) {
        // The first run ends here; the agent's retry runs the handler again.
        assert.ok(e instanceof InputRequiredError, String(e));
        req.fail(e.message);
      }
    }
  })();
  const meta = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": { elicitation: {} },
  };
  const call = async (params) => {
    const res = await fetch(endpoint, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        accept: "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": "ts__greet",
      },
      body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "tools/call", params: { name: "ts__greet", arguments: {}, ...params, _meta: meta } }),
    });
    return res.json();
  };
  const first = await call({});
  assert.equal(first.result.resultType, "input_required", JSON.stringify(first));
  assert.equal(first.result.inputRequests.name.method, "elicitation/create");
  const answer = { name: { action: "accept", content: { name: "Ada" } } };
  const done = await call({ inputResponses: answer, requestState: first.result.requestState });
  assert.equal(done.result.content[0].text, "Hello, Ada!", JSON.stringify(done));
  assert.equal(runs, 2);
  await ts.close();
  await node.stop();
});

test("a question from a TypeScript provider is declined by a caller with no agent", async () => {
  const node = await startNode();
  const ts = await connect(node.ws);
  const reg = await ts.register("ts.ask");
  (async () => {
    for await (const req of reg) {
      try {
        await req.ask("roots/list", {});
        req.respond("answered?");
      } catch (e) {
        assert.ok(e instanceof NotAnsweredError, String(e));
        req.fail(`not answered: ${e.message}`);
      }
    }
  })();
  // A TypeScript caller declines too (it has no agent).
  const caller = await connect(node.ws);
  await assert.rejects(caller.call("ts.ask", "", { timeout: 10000 }), /cannot answer questions/);
  // And so does the Rust CLI.
  await assert.rejects(cli(["call", "ts.ask", "", "--url", node.quic, "--ca", node.cert]), /cannot answer questions/);
  await caller.close();
  await ts.close();
  await node.stop();
});
