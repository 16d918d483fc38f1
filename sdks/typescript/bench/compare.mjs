// The TypeScript SDK in Node against the `nats` npm client (nats.js) on this machine, in
// alternating rounds: pub/sub delivered messages per second (one publisher, one subscriber,
// 64 B payloads) and request/reply latency (one caller, one provider, sequential calls).
//   usage: node bench/compare.mjs [--msgs N] [--calls N] [--rounds N]
// Starts a fovea node (the workspace's release binary, or FOVEA_BIN) with --ws and
// nats-server (Debian's package) on loopback. Prints key=value lines; the last one sums up.
import { spawn } from "node:child_process";
import { setTimeout as sleep } from "node:timers/promises";
import { parseArgs } from "node:util";

import { connect as natsConnect } from "nats";

import { connect } from "../dist/index.js";
import { freePort, startNode } from "../test/helpers.mjs";

const { values } = parseArgs({
  options: { msgs: { type: "string", default: "200000" }, calls: { type: "string", default: "5000" }, rounds: { type: "string", default: "3" } },
});
const MSGS = Number(values.msgs), CALLS = Number(values.calls), ROUNDS = Number(values.rounds);
const payload = new Uint8Array(64).fill(120);

async function pubsub(pub, sub) {
  let got = 0;
  const done = sub(() => ++got >= MSGS);
  const t0 = performance.now();
  for (let i = 0; i < MSGS; i++) await pub(payload);
  await Promise.race([done, sleep(60_000)]);
  return (got / (performance.now() - t0)) * 1000;
}

async function reqrep(call) {
  const lat = [];
  for (let i = 0; i < CALLS; i++) {
    const t = performance.now();
    await call();
    lat.push(performance.now() - t);
  }
  lat.sort((a, b) => a - b);
  return { p50: lat[Math.floor(lat.length / 2)] * 1000, p99: lat[Math.floor(lat.length * 0.99)] * 1000 };
}

async function foveaRound(url) {
  const a = await connect(url), b = await connect(url);
  const s = await b.subscribe("bench.x");
  const rate = await pubsub((p) => a.publish("bench.x", p), async (each) => { for await (const _ of s) if (each()) return; });
  const reg = await b.register("bench.echo");
  (async () => { for await (const r of reg) r.respond(r.payload); })();
  const lat = await reqrep(() => a.call("bench.echo", payload));
  await a.close(); await b.close();
  return { rate, ...lat };
}

async function natsRound(port) {
  const a = await natsConnect({ servers: `127.0.0.1:${port}` }), b = await natsConnect({ servers: `127.0.0.1:${port}` });
  const s = b.subscribe("bench.x");
  await b.flush();
  const rate = await pubsub(async (p) => a.publish("bench.x", p), async (each) => { for await (const _ of s) if (each()) return; });
  const echo = b.subscribe("bench.echo");
  (async () => { for await (const m of echo) m.respond(m.data); })();
  await b.flush();
  const lat = await reqrep(() => a.request("bench.echo", payload, { timeout: 5000 }));
  await a.close(); await b.close();
  return { rate, ...lat };
}

const node = await startNode();
const natsPort = await freePort();
const nats = spawn("nats-server", ["-a", "127.0.0.1", "-p", String(natsPort)], { stdio: "ignore" });
await sleep(500);
const median = (xs) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)];
const f = [], n = [];
try {
  for (let r = 1; r <= ROUNDS; r++) {
    f.push(await foveaRound(node.ws));
    n.push(await natsRound(natsPort));
    console.log(`round=${r} fovea_rate=${f.at(-1).rate.toFixed(0)} nats_rate=${n.at(-1).rate.toFixed(0)} fovea_p50_us=${f.at(-1).p50.toFixed(0)} nats_p50_us=${n.at(-1).p50.toFixed(0)}`);
  }
} finally {
  nats.kill();
  await node.stop();
}
const fr = median(f.map((x) => x.rate)), nr = median(n.map((x) => x.rate));
const fp = median(f.map((x) => x.p50)), np = median(n.map((x) => x.p50));
const f99 = median(f.map((x) => x.p99)), n99 = median(n.map((x) => x.p99));
console.log(`compare sdk=typescript msgs=${MSGS} calls=${CALLS} rounds=${ROUNDS} fovea_delivered_rate=${fr.toFixed(0)} nats_delivered_rate=${nr.toFixed(0)} rate_ratio=${(fr / nr).toFixed(2)} fovea_p50_us=${fp.toFixed(0)} nats_p50_us=${np.toFixed(0)} p50_ratio=${(fp / np).toFixed(2)} fovea_p99_us=${f99.toFixed(0)} nats_p99_us=${n99.toFixed(0)}`);
