// A Node program for mesh.test.mjs: over wss:// to its node, it provides mesh.double and
// answers every message on mesh.ping with one on mesh.pong. Prints "ready" when set up.
import { connect } from "../dist/index.js";

const client = await connect(process.argv[2], { name: "node program" });
const reg = await client.register("mesh.double");
(async () => {
  for await (const req of reg) req.respond(String(2 * Number(req.text())));
})();
const pings = await client.subscribe("mesh.ping");
console.log("ready");
for await (const m of pings) await client.publish("mesh.pong", `pong ${m.text()}`);
